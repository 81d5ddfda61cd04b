package dev.inferbridge;

import java.util.EnumSet;
import java.util.List;
import org.apache.beam.sdk.schemas.Schema.FieldType;

/** The kind of value an inference has after each postprocessing step; fixes the output type. */
enum InferenceKind {
  VECTOR(FieldType.array(FieldType.DOUBLE)),
  NUMBER(FieldType.DOUBLE),
  INTEGER(FieldType.INT64),
  LABEL(FieldType.STRING);

  private final FieldType fieldType;

  InferenceKind(FieldType fieldType) {
    this.fieldType = fieldType;
  }

  FieldType fieldType() {
    return fieldType;
  }

  /** The kind after the model's {@code output} and then {@code postprocess}, checking each step. */
  static InferenceKind after(ModelOutput output, List<Step> postprocess) {
    InferenceKind kind = output == ModelOutput.PREDICT_PROBA ? VECTOR : NUMBER;
    for (Step step : postprocess) {
      kind = next(kind, step);
    }
    return kind;
  }

  private static InferenceKind next(InferenceKind kind, Step step) {
    switch (step.getName()) {
      case "argmax":
        return require(kind, step, EnumSet.of(VECTOR), INTEGER);
      case "softmax":
        return require(kind, step, EnumSet.of(VECTOR), VECTOR);
      case "round":
        return require(kind, step, EnumSet.of(NUMBER), INTEGER);
      case "labels":
        return require(kind, step, EnumSet.of(INTEGER), LABEL);
      default:
        throw new IllegalArgumentException(
            "withPostprocess(): step '" + step.getName() + "' is not a postprocessing step; allowed: "
                + "argmax, softmax, round, labels");
    }
  }

  private static InferenceKind require(
      InferenceKind kind, Step step, EnumSet<InferenceKind> accepted, InferenceKind produces) {
    if (!accepted.contains(kind)) {
      throw new IllegalArgumentException(
          "withPostprocess(): step '" + step.getName() + "' takes a " + accepted
              + " value but receives a " + kind + " here; reorder the steps or change "
              + "Model.withOutput()");
    }
    return produces;
  }
}

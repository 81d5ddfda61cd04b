package dev.inferbridge;

import org.apache.beam.sdk.schemas.Schema.FieldType;

/**
 * The kind of value an inference has: what a model gives and what each postprocessing step
 * accepts and produces. The kind after the last step fixes the type of the {@code inference}
 * field of {@link InferenceResult#getInferences()}.
 *
 * <p>The built-in steps declare their kinds in the step catalog shared with Python; a step
 * registered by a Python package declares what it produces with {@link Step#producing}:
 *
 * <pre>{@code
 * Inference.of(SklearnModel.pickle("/models/digits.pkl"))
 *     .withPostprocess(Step.round(), Step.named("digit_name", params).producing(InferenceKind.LABEL));
 * // the inference field is a STRING
 * }</pre>
 */
public enum InferenceKind {
  /** A vector of numbers, e.g. class probabilities: {@code ARRAY<DOUBLE>}. */
  VECTOR("vector", FieldType.array(FieldType.DOUBLE)),
  /** One number: {@code DOUBLE}. */
  NUMBER("number", FieldType.DOUBLE),
  /** An integer, e.g. a class index: {@code INT64}. */
  INTEGER("integer", FieldType.INT64),
  /** A label: {@code STRING}. */
  LABEL("label", FieldType.STRING),
  /** Scores by name: {@code MAP<STRING, DOUBLE>}. */
  MAP("map", FieldType.map(FieldType.STRING, FieldType.DOUBLE));

  private final String wireName;
  private final FieldType fieldType;

  InferenceKind(String wireName, FieldType fieldType) {
    this.wireName = wireName;
    this.fieldType = fieldType;
  }

  /** The name the Python composite and the step catalog use, e.g. {@code vector}. */
  public String wireName() {
    return wireName;
  }

  /** The type of the {@code inference} field when the inference has this kind. */
  public FieldType fieldType() {
    return fieldType;
  }

  /** The kind named {@code wireName}, or null for a name that is no kind (e.g. {@code any}). */
  static InferenceKind fromWireName(String wireName) {
    for (InferenceKind kind : values()) {
      if (kind.wireName.equals(wireName)) {
        return kind;
      }
    }
    return null;
  }
}

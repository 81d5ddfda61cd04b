package dev.inferbridge;

import java.util.LinkedHashMap;
import java.util.Map;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.transforms.PTransform;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.PInput;
import org.apache.beam.sdk.values.POutput;
import org.apache.beam.sdk.values.PValue;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TupleTag;

/**
 * The outputs of {@link Inference}. Every input Row gives exactly one output Row: an inference in
 * {@link #getInferences()}, or a failure in {@link #getFailures()}.
 *
 * <pre>{@code
 * InferenceResult result = rows.apply(Inference.of(model).withKeyField("id").withFeatureField("pixels"));
 * result.getInferences().apply(...);
 * result.getFailures().apply(ToJson.of()).apply(...);
 * }</pre>
 */
public final class InferenceResult implements POutput {
  /** The tag of the inference Rows; the name of the Python composite's output. */
  static final TupleTag<Row> INFERENCES = new TupleTag<>("inferences");

  /** The tag of the failure Rows; the name of the Python composite's output. */
  static final TupleTag<Row> FAILURES = new TupleTag<>("failures");

  private final Pipeline pipeline;
  private final PCollection<Row> inferences;
  private final PCollection<Row> failures;

  InferenceResult(Pipeline pipeline, PCollection<Row> inferences, PCollection<Row> failures) {
    this.pipeline = pipeline;
    this.inferences = inferences;
    this.failures = failures;
  }

  /** The inferences, with the schema {@link Inference#outputSchema}. */
  public PCollection<Row> getInferences() {
    return inferences;
  }

  /** The input Rows that got no inference, with the schema {@link Inference#FAILURE_SCHEMA}. */
  public PCollection<Row> getFailures() {
    return failures;
  }

  @Override
  public Pipeline getPipeline() {
    return pipeline;
  }

  @Override
  public Map<TupleTag<?>, PValue> expand() {
    Map<TupleTag<?>, PValue> outputs = new LinkedHashMap<>();
    outputs.put(INFERENCES, inferences);
    outputs.put(FAILURES, failures);
    return outputs;
  }

  @Override
  public void finishSpecifyingOutput(
      String transformName, PInput input, PTransform<?, ?> transform) {}
}

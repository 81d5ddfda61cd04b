package dev.inferbridge.examples;

import dev.inferbridge.Inference;
import dev.inferbridge.InferenceResult;
import dev.inferbridge.LocalRun;
import dev.inferbridge.ModelOutput;
import dev.inferbridge.OnnxModel;
import dev.inferbridge.SklearnModel;
import dev.inferbridge.Step;
import dev.inferbridge.VariableLength;
import java.nio.file.Files;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.List;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.transforms.Create;
import org.apache.beam.sdk.transforms.MapElements;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TypeDescriptors;
import org.joda.time.Duration;

/**
 * Most builder options in one pipeline, for the cross-language tests: skops and ONNX models keyed
 * by parity, a sha256 pin, a model update that swaps the skops model, two feature fields, a
 * passthrough field, batching, padding, a resource hint and a metrics namespace.
 *
 * <p>Writes {@code predictions.csv} ({@code id,label,model_id,prediction}) and prints
 * {@code rows=<n> failures=<f>}.
 */
public final class OptionsTour {
  static final Schema HALVES_SCHEMA =
      Schema.builder()
          .addInt64Field("id")
          .addStringField("parity")
          .addInt64Field("label")
          .addArrayField("top", FieldType.DOUBLE)
          .addArrayField("bottom", FieldType.DOUBLE)
          .build();

  static final Schema UPDATE_SCHEMA = Schema.builder().addStringField("model_id").addStringField("uri").build();

  private OptionsTour() {}

  public static void main(String[] args) throws Exception {
    ExampleOptions options = ExampleOptions.parse(args);
    List<Row> rows = new ArrayList<>();
    for (Row digit : ExampleIo.readDigits(ExampleIo.data(options, "test_rows.csv"))) {
      List<Double> pixels = new ArrayList<>(digit.<Double>getArray("pixels"));
      long id = digit.getInt64("id");
      rows.add(
          Row.withSchema(HALVES_SCHEMA)
              .addValues(id, id % 2 == 0 ? "even" : "odd", digit.getInt64("label"), pixels.subList(0, 32), pixels.subList(32, 64))
              .build());
    }
    String onnx = ExampleIo.data(options, "digits.onnx").toString();
    try (LocalRun local = LocalRun.start(options)) {
      Pipeline pipeline = Pipeline.create(options);
      PCollection<Row> updates =
          pipeline.apply(
              "Updates",
              Create.of(Row.withSchema(UPDATE_SCHEMA).addValues("skops", ExampleIo.data(options, "region_0.skops").toString()).build())
                  .withRowSchema(UPDATE_SCHEMA));
      InferenceResult result =
          pipeline
              .apply("Rows", Create.of(rows).withRowSchema(HALVES_SCHEMA))
              .apply(
                  "Classify",
                  Inference.of(
                          SklearnModel.skops(ExampleIo.data(options, "digits.skops").toString())
                              .withOutput(ModelOutput.PREDICT_PROBA)
                              .withModelId("skops")
                              .withKeys("even"),
                          OnnxModel.of(onnx).withModelId("onnx").withSha256(sha256(onnx)))
                      .withKeyField("parity")
                      .withFeatureFields("top", "bottom")
                      .withPassthroughFields("id", "label")
                      .withPreprocess(Step.scale(1.0 / 16))
                      .withPostprocess(Step.argmax())
                      .withBatchSize(8, 64)
                      .withVariableLength(VariableLength.PAD, 0.0)
                      .withMinRam("1GB")
                      .withMetricsNamespace("tour")
                      .withWatchInterval(Duration.standardSeconds(30))
                      .withModelUpdates(updates));
      ExampleIo.writeLines(
          result.getInferences().apply(
              "Format",
              MapElements.into(TypeDescriptors.strings())
                  .via((Row r) -> r.getInt64("id") + "," + r.getInt64("label") + "," + r.getString("model_id") + "," + r.getInt64("inference"))),
          "Predictions",
          ExampleIo.output(options, "predictions.csv").toString());
      ExampleIo.writeLines(
          result.getFailures().apply("FailureKeys", MapElements.into(TypeDescriptors.strings()).via((Row f) -> f.getString("key"))),
          "Failures",
          ExampleIo.output(options, "failures.txt").toString());
      ExampleIo.runToCompletion(pipeline);
      String predictions = ExampleIo.read(ExampleIo.output(options, "predictions.csv"));
      String failures = ExampleIo.read(ExampleIo.output(options, "failures.txt"));
      System.out.println(
          "rows=" + (predictions.isEmpty() ? 0 : predictions.split("\n").length)
              + " failures=" + (failures.isEmpty() ? 0 : failures.split("\n").length));
    }
  }

  private static String sha256(String path) throws Exception {
    byte[] digest = MessageDigest.getInstance("SHA-256").digest(Files.readAllBytes(java.nio.file.Paths.get(path)));
    StringBuilder hex = new StringBuilder();
    for (byte b : digest) {
      hex.append(String.format("%02x", b));
    }
    return hex.toString();
  }
}

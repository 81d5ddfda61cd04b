package dev.inferbridge.examples;

import dev.inferbridge.Inference;
import dev.inferbridge.InferenceResult;
import dev.inferbridge.LocalRun;
import dev.inferbridge.SklearnModel;
import dev.inferbridge.Step;
import java.util.ArrayList;
import java.util.List;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.transforms.Create;
import org.apache.beam.sdk.transforms.MapElements;
import org.apache.beam.sdk.transforms.ToJson;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TypeDescriptors;

/**
 * Dead letters: malformed rows go to a failures file with their reason, and every row is counted.
 *
 * <p>Reads {@code --input} (default: the data directory's {@code test_rows.csv}); a row whose
 * pixels do not all parse as numbers gets no pixels, and rows may have any number of pixels.
 * Writes {@code predictions.csv} and {@code failures.jsonl} (one failure Row as JSON per line) and
 * prints {@code rows=<n> inferences=<i> failures=<f>}; exits 1 unless {@code i + f == n}.
 */
public final class DeadLetters {
  static final Schema LENIENT_SCHEMA =
      Schema.builder().addInt64Field("id").addNullableField("pixels", FieldType.array(FieldType.DOUBLE)).build();

  /** Options: the examples' own, plus the CSV to read. */
  public interface Options extends ExampleOptions {
    @org.apache.beam.sdk.options.Description("CSV of id,label,pixel_0.. rows (default: DATA_DIR/test_rows.csv)")
    String getInput();

    void setInput(String value);
  }

  private DeadLetters() {}

  public static void main(String[] args) throws Exception {
    Options options = ExampleOptions.parse(args, Options.class);
    java.nio.file.Path input = options.getInput() != null ? java.nio.file.Paths.get(options.getInput()) : ExampleIo.data(options, "test_rows.csv");
    List<Row> rows = new ArrayList<>();
    for (String[] cells : ExampleIo.csvCells(input)) {
      rows.add(Row.withSchema(LENIENT_SCHEMA).addValues(Long.parseLong(cells[0]), pixels(cells)).build());
    }
    try (LocalRun local = LocalRun.start(options)) {
      Pipeline pipeline = Pipeline.create(options);
      InferenceResult result =
          pipeline
              .apply(Create.of(rows).withRowSchema(LENIENT_SCHEMA))
              .apply(
                  "Classify",
                  Inference.of(SklearnModel.pickle(ExampleIo.data(options, "digits.pkl").toString()))
                      .withKeyField("id")
                      .withFeatureFields("pixels")
                      .withPreprocess(Step.scale(1.0 / 16))
                      .withPostprocess(Step.round()));
      ExampleIo.writeLines(
          result.getInferences().apply(
              "Format", MapElements.into(TypeDescriptors.strings()).via((Row r) -> r.getInt64("key") + "," + r.getInt64("inference"))),
          "Predictions",
          ExampleIo.output(options, "predictions.csv").toString());
      ExampleIo.writeLines(result.getFailures().apply("ToJson", ToJson.of()), "Failures", ExampleIo.output(options, "failures.jsonl").toString());
      ExampleIo.runToCompletion(pipeline);
      long inferences = lineCount(ExampleIo.read(ExampleIo.output(options, "predictions.csv")));
      long failures = lineCount(ExampleIo.read(ExampleIo.output(options, "failures.jsonl")));
      System.out.println("rows=" + rows.size() + " inferences=" + inferences + " failures=" + failures);
      if (inferences + failures != rows.size()) {
        System.exit(1);
      }
    }
  }

  /** The pixels of a CSV row, or null when one does not parse as a number. */
  private static List<Double> pixels(String[] cells) {
    List<Double> pixels = new ArrayList<>();
    for (int i = 2; i < cells.length; i++) {
      try {
        pixels.add(Double.parseDouble(cells[i]));
      } catch (NumberFormatException e) {
        return null;
      }
    }
    return pixels;
  }

  private static long lineCount(String text) {
    return text.isEmpty() ? 0 : text.split("\n").length;
  }
}

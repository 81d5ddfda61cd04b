package dev.inferbridge.examples;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
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
 * pixels do not all parse as numbers gets no pixels, an empty cell is a null pixel, and rows may
 * have any number of pixels (none too). Writes {@code predictions.csv}, {@code failures.jsonl}
 * (one failure Row as JSON per line) and {@code failed_rows.csv} ({@code id,stage} of each failed
 * row, the id read back from the failure's {@code element} JSON with Jackson), and prints {@code
 * rows=<n> inferences=<i> failures=<f>}; exits 1 unless {@code i + f == n}. {@code --blockSize}
 * sends the rows in packed blocks.
 */
public final class DeadLetters {
  /** Jackson with its defaults: standard JSON only (no NaN or Infinity tokens). */
  private static final ObjectMapper JSON = new ObjectMapper();

  static final Schema LENIENT_SCHEMA =
      Schema.builder()
          .addInt64Field("id")
          .addNullableField("pixels", FieldType.array(FieldType.DOUBLE.withNullable(true)))
          .build();

  /** Options: the examples' own, plus the CSV to read. */
  public interface Options extends ExampleOptions {
    @org.apache.beam.sdk.options.Description("CSV of id,label,pixel_0.. rows (default: DATA_DIR/test_rows.csv)")
    String getInput();

    void setInput(String value);

    @org.apache.beam.sdk.options.Description("Rows per packed block; 0 sends Rows one by one")
    @org.apache.beam.sdk.options.Default.Integer(0)
    int getBlockSize();

    void setBlockSize(int value);
  }

  private DeadLetters() {}

  public static void main(String[] args) throws Exception {
    Options options = ExampleOptions.parse(args, Options.class);
    java.nio.file.Path input = options.getInput() != null ? java.nio.file.Paths.get(options.getInput()) : ExampleIo.data(options, "test_rows.csv");
    List<Row> rows = new ArrayList<>();
    for (String[] cells : ExampleIo.csvCells(input)) {
      rows.add(Row.withSchema(LENIENT_SCHEMA).attachValues(Long.parseLong(cells[0]), pixels(cells)));
    }
    try (LocalRun local = LocalRun.start(options)) {
      Pipeline pipeline = Pipeline.create(options);
      Inference inference =
          Inference.of(SklearnModel.pickle(ExampleIo.data(options, "digits.pkl").toString()))
              .withKeyField("id")
              .withFeatureFields("pixels")
              .withPreprocess(Step.scale(1.0 / 16))
              .withPostprocess(Step.round());
      if (options.getBlockSize() > 0) {
        inference = inference.withBlockSize(options.getBlockSize());
      }
      InferenceResult result =
          pipeline.apply(Create.of(rows).withRowSchema(LENIENT_SCHEMA)).apply("Classify", inference);
      ExampleIo.writeLines(
          result.getInferences().apply(
              "Format", MapElements.into(TypeDescriptors.strings()).via((Row r) -> r.getInt64("key") + "," + r.getInt64("inference"))),
          "Predictions",
          ExampleIo.output(options, "predictions.csv").toString());
      ExampleIo.writeLines(result.getFailures().apply("ToJson", ToJson.of()), "Failures", ExampleIo.output(options, "failures.jsonl").toString());
      ExampleIo.writeLines(
          result.getFailures().apply("FailedRows", MapElements.into(TypeDescriptors.strings()).via(DeadLetters::failedRow)),
          "FailedRowsCsv",
          ExampleIo.output(options, "failed_rows.csv").toString());
      ExampleIo.runToCompletion(pipeline);
      long inferences = lineCount(ExampleIo.read(ExampleIo.output(options, "predictions.csv")));
      long failures = lineCount(ExampleIo.read(ExampleIo.output(options, "failures.jsonl")));
      System.out.println("rows=" + rows.size() + " inferences=" + inferences + " failures=" + failures);
      if (inferences + failures != rows.size()) {
        System.exit(1);
      }
    }
  }

  /** {@code id,stage} of a failure: the id is the input row's, read from the element's JSON. */
  private static String failedRow(Row failure) {
    try {
      JsonNode element = JSON.readTree(failure.getString("element"));
      return element.get("id").asLong() + "," + failure.getString("stage");
    } catch (java.io.IOException e) {
      throw new IllegalStateException("a failure's element is not JSON: " + failure.getString("element"), e);
    }
  }

  /** The pixels of a CSV row (an empty cell: null), or null when one does not parse as a number. */
  private static List<Double> pixels(String[] cells) {
    List<Double> pixels = new ArrayList<>();
    for (int i = 2; i < cells.length; i++) {
      try {
        pixels.add(cells[i].isEmpty() ? null : Double.parseDouble(cells[i]));
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

package dev.inferbridge.examples;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.PipelineResult;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.transforms.Combine;
import org.apache.beam.sdk.transforms.Create;
import org.apache.beam.sdk.transforms.DoFn;
import org.apache.beam.sdk.transforms.ParDo;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;

/** Reading the digits rows and writing small results to local files, shared by the examples. */
final class ExampleIo {
  /** A held-out digit: id, true label, 64 raw pixels (0..16). */
  static final Schema DIGIT_SCHEMA =
      Schema.builder().addInt64Field("id").addInt64Field("label").addArrayField("pixels", FieldType.DOUBLE).build();

  private ExampleIo() {}

  /** {@code file} in the data directory. */
  static Path data(ExampleOptions options, String file) {
    return Paths.get(options.getDataDir()).toAbsolutePath().resolve(file);
  }

  /** {@code file} in the output directory, which is created if missing. */
  static Path output(ExampleOptions options, String file) throws IOException {
    Path dir = Paths.get(options.getOutputDir()).toAbsolutePath();
    Files.createDirectories(dir);
    return dir.resolve(file);
  }

  /** Runs {@code pipeline} to completion, failing unless it ends DONE. */
  static void runToCompletion(Pipeline pipeline) {
    PipelineResult.State state = pipeline.run().waitUntilFinish();
    if (state != PipelineResult.State.DONE) {
      throw new IllegalStateException("the pipeline ended in state " + state);
    }
  }

  /** The held-out digits as a PCollection of {@link #DIGIT_SCHEMA} Rows. */
  static PCollection<Row> digits(Pipeline pipeline, ExampleOptions options) throws IOException {
    return pipeline.apply("Digits", Create.of(readDigits(data(options, "test_rows.csv"))).withRowSchema(DIGIT_SCHEMA));
  }

  /** The rows of {@code test_rows.csv} as written by {@code examples/digits/train_model.py}. */
  static List<Row> readDigits(Path csv) throws IOException {
    List<Row> rows = new ArrayList<>();
    for (String[] cells : csvCells(csv)) {
      List<Double> pixels = new ArrayList<>();
      for (int i = 2; i < cells.length; i++) {
        pixels.add(Double.parseDouble(cells[i]));
      }
      // attachValues takes values already of the schema's types as they are; addValues(...).build()
      // would copy and check each row's 64 pixels again.
      rows.add(Row.withSchema(DIGIT_SCHEMA).attachValues(Long.parseLong(cells[0]), Long.parseLong(cells[1]), pixels));
    }
    return rows;
  }

  /** The cells of every line of a CSV file but its header. */
  static List<String[]> csvCells(Path csv) throws IOException {
    List<String> lines = Files.readAllLines(csv, StandardCharsets.UTF_8);
    List<String[]> cells = new ArrayList<>();
    for (String line : lines.subList(1, lines.size())) {
      cells.add(line.split(",", -1));
    }
    return cells;
  }

  /** Writes {@code lines}, sorted, to {@code path} (an empty file when there are none). */
  static void writeLines(PCollection<String> lines, String name, String path) {
    lines
        .apply(name + "Collect", Combine.globally(new SortedLines()))
        .apply(name + "Write", ParDo.of(new WriteText(path)));
  }

  static String read(Path file) throws IOException {
    return new String(Files.readAllBytes(file), StandardCharsets.UTF_8).trim();
  }

  /** Joins lines into one text, sorted, each ending in a newline, so it can be written in one go. */
  static final class SortedLines extends Combine.CombineFn<String, List<String>, String> {
    @Override
    public List<String> createAccumulator() {
      return new ArrayList<>();
    }

    @Override
    public List<String> addInput(List<String> acc, String line) {
      acc.add(line);
      return acc;
    }

    @Override
    public List<String> mergeAccumulators(Iterable<List<String>> accs) {
      List<String> merged = new ArrayList<>();
      accs.forEach(merged::addAll);
      return merged;
    }

    @Override
    public String extractOutput(List<String> acc) {
      List<String> sorted = new ArrayList<>(acc);
      Collections.sort(sorted);
      StringBuilder text = new StringBuilder();
      for (String line : sorted) {
        text.append(line).append('\n');
      }
      return text.toString();
    }
  }

  /** Writes its one input to a local file; runs in this JVM (the examples' Java workers). */
  static final class WriteText extends DoFn<String, Void> {
    private final String path;

    WriteText(String path) {
      this.path = path;
    }

    @ProcessElement
    public void process(@Element String text) throws IOException {
      Files.write(Paths.get(path), text.getBytes(StandardCharsets.UTF_8));
    }
  }
}

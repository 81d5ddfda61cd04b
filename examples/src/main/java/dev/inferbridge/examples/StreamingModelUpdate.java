package dev.inferbridge.examples;

import dev.inferbridge.Inference;
import dev.inferbridge.InferenceResult;
import dev.inferbridge.LocalRun;
import dev.inferbridge.ModelOutput;
import dev.inferbridge.SklearnModel;
import dev.inferbridge.Step;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Collectors;
import java.util.stream.Stream;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.options.Default;
import org.apache.beam.sdk.options.Description;
import org.apache.beam.sdk.options.StreamingOptions;
import org.apache.beam.sdk.transforms.DoFn;
import org.apache.beam.sdk.transforms.GroupByKey;
import org.apache.beam.sdk.transforms.MapElements;
import org.apache.beam.sdk.transforms.ParDo;
import org.apache.beam.sdk.transforms.PeriodicImpulse;
import org.apache.beam.sdk.transforms.WithKeys;
import org.apache.beam.sdk.transforms.windowing.BoundedWindow;
import org.apache.beam.sdk.transforms.windowing.FixedWindows;
import org.apache.beam.sdk.transforms.windowing.IntervalWindow;
import org.apache.beam.sdk.transforms.windowing.Window;
import org.apache.beam.sdk.values.KV;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TypeDescriptors;
import org.joda.time.Duration;
import org.joda.time.Instant;

/**
 * Streaming inference with a model update arriving mid-stream.
 *
 * <p>An unbounded source ticks every {@code --tickMillis}; each tick becomes {@code --rowsPerTick}
 * digit rows (ids {@code tick * rowsPerTick + j}, pixels cycling through the held-out digits).
 * {@link Inference} classifies them, batching for at most {@code --maxBatchMillis}, with the newest
 * model of the folder {@code streaming/} in the data directory: it starts with
 * {@code digits-1.pkl} (a copy of {@code digits.pkl}); once rows of tick {@code --updateAtTick}
 * have been classified, the pipeline publishes {@code digits-2.pkl} (a copy of
 * {@code digits_b.pkl}, the A/B example's second model) there, as a retraining job would, and
 * each worker switches to it at its next check of the folder ({@code --watchMillis}). The
 * inferences are windowed into fixed windows of {@code --windowTicks} ticks and each
 * window is written to {@code windows/<window start millis>.csv} ({@code id,prediction}, sorted;
 * rewritten whole if a window is retried, so the files are exact after a restart). Prints
 * {@code windows=<w> rows=<n> failures=<f>}.
 *
 * <p>Runs on any streaming portable runner; locally on Flink: {@code scripts/run-example
 * StreamingModelUpdate} starts a local Flink job server for it.
 */
public final class StreamingModelUpdate {
  /** Options of the example. */
  public interface Options extends ExampleOptions {
    @Description("Ticks of the source; the stream ends after the last")
    @Default.Integer(64)
    int getTicks();

    void setTicks(int value);

    @Description("How far ahead of the pipeline's construction the first tick is, in milliseconds")
    @Default.Integer(5000)
    int getStartDelayMillis();

    void setStartDelayMillis(int value);

    @Description("Milliseconds between ticks")
    @Default.Integer(250)
    int getTickMillis();

    void setTickMillis(int value);

    @Description("Digit rows per tick")
    @Default.Integer(20)
    int getRowsPerTick();

    void setRowsPerTick(int value);

    @Description("The tick whose classified rows make the pipeline publish the new model")
    @Default.Integer(24)
    int getUpdateAtTick();

    void setUpdateAtTick(int value);

    @Description("How often each worker checks the model folder for a newer file, in milliseconds")
    @Default.Integer(500)
    int getWatchMillis();

    void setWatchMillis(int value);

    @Description("Ticks per output window")
    @Default.Integer(8)
    int getWindowTicks();

    void setWindowTicks(int value);

    @Description("Longest time a row waits for its batch to fill, in milliseconds")
    @Default.Integer(500)
    int getMaxBatchMillis();

    void setMaxBatchMillis(int value);
  }

  private StreamingModelUpdate() {}

  public static void main(String[] args) throws Exception {
    Options options = ExampleOptions.parse(args, Options.class);
    options.as(StreamingOptions.class).setStreaming(true);
    Duration tick = Duration.millis(options.getTickMillis());
    Duration windowSize = tick.multipliedBy(options.getWindowTicks());
    // Start on a window boundary a few seconds ahead, so that every window holds whole ticks.
    long now = Instant.now().plus(Duration.millis(options.getStartDelayMillis())).getMillis();
    Instant start = new Instant(now - now % windowSize.getMillis() + windowSize.getMillis());
    Instant last = start.plus(tick.multipliedBy(options.getTicks() - 1));
    Path windows = emptyDirectory(ExampleIo.output(options, "windows"));
    Path failures = emptyDirectory(ExampleIo.output(options, "failures"));
    Path models = Files.createDirectories(ExampleIo.data(options, "streaming"));
    Files.deleteIfExists(models.resolve("digits-2.pkl"));
    Files.copy(ExampleIo.data(options, "digits.pkl"), models.resolve("digits-1.pkl"), StandardCopyOption.REPLACE_EXISTING);

    try (LocalRun local = LocalRun.start(options)) {
      Pipeline pipeline = Pipeline.create(options);
      PCollection<Row> digits =
          pipeline
              .apply("Ticks", PeriodicImpulse.create().startAt(start).stopAt(last).withInterval(tick))
              .apply("ToDigits", ParDo.of(new TickToDigits(ExampleIo.data(options, "test_rows.csv").toString(), start, tick, options.getRowsPerTick())))
              .setRowSchema(ExampleIo.DIGIT_SCHEMA);
      InferenceResult result =
          digits.apply(
              "Classify",
              Inference.of(
                      SklearnModel.pickle(models.resolve("digits-1.pkl").toString())
                          .withModelId("digits")
                          .withOutput(ModelOutput.PREDICT_PROBA)
                          .withWatchPattern(models.resolve("digits-*.pkl").toString()))
                  .withKeyField("id")
                  .withFeatureFields("pixels")
                  .withPreprocess(Step.scale(1.0 / 16))
                  .withPostprocess(Step.argmax())
                  .withMaxBatchDuration(Duration.millis(options.getMaxBatchMillis()))
                  .withWatchInterval(Duration.millis(options.getWatchMillis())));
      long firstUpdatedId = (long) options.getUpdateAtTick() * options.getRowsPerTick();
      writeWindows(
          result
              .getInferences()
              .apply(
                  "PublishNewModel",
                  ParDo.of(new PublishAfter(firstUpdatedId, ExampleIo.data(options, "digits_b.pkl").toString(), models.resolve("digits-2.pkl").toString())))
              .setRowSchema(result.getInferences().getSchema())
              .apply("FormatInferences", MapElements.into(TypeDescriptors.strings()).via((Row r) -> r.getInt64("key") + "," + r.getInt64("inference"))),
          "Inferences",
          windowSize,
          windows);
      writeWindows(
          result.getFailures().apply("FormatFailures", MapElements.into(TypeDescriptors.strings()).via((Row r) -> r.getString("key") + "," + r.getString("message"))),
          "Failures",
          windowSize,
          failures);
      ExampleIo.runToCompletion(pipeline);
    }
    long rows = 0;
    int windowCount = 0;
    for (Path file : listCsv(windows)) {
      rows += Files.readAllLines(file).size();
      windowCount++;
    }
    long failed = 0;
    for (Path file : listCsv(failures)) {
      failed += Files.readAllLines(file).size();
    }
    System.out.println("windows=" + windowCount + " rows=" + rows + " failures=" + failed);
  }

  /** Each window of {@code lines} as one file in {@code dir}. */
  private static void writeWindows(PCollection<String> lines, String name, Duration windowSize, Path dir) {
    lines
        .apply(name + "Windows", Window.into(FixedWindows.of(windowSize)))
        .apply(name + "ByWindow", WithKeys.of("window"))
        .apply(name + "Group", GroupByKey.create())
        .apply(name + "Write", ParDo.of(new WriteWindow(dir.toString())));
  }

  /** {@code dir}, created, without the window files of an earlier run. */
  private static Path emptyDirectory(Path dir) throws IOException {
    Files.createDirectories(dir);
    for (Path file : listCsv(dir)) {
      Files.delete(file);
    }
    return dir;
  }

  private static List<Path> listCsv(Path dir) throws IOException {
    try (Stream<Path> files = Files.list(dir)) {
      return files.filter(f -> f.toString().endsWith(".csv")).collect(Collectors.toList());
    }
  }

  /** A tick's instant -> its rows of digits, stamped with the tick's time. */
  static final class TickToDigits extends DoFn<Instant, Row> {
    private final String csv;
    private final Instant start;
    private final Duration tick;
    private final int rowsPerTick;
    private transient List<Row> digits;

    TickToDigits(String csv, Instant start, Duration tick, int rowsPerTick) {
      this.csv = csv;
      this.start = start;
      this.tick = tick;
      this.rowsPerTick = rowsPerTick;
    }

    @Setup
    public void setup() throws IOException {
      digits = ExampleIo.readDigits(Paths.get(csv));
    }

    @ProcessElement
    public void process(@Element Instant at, OutputReceiver<Row> out) {
      long index = (at.getMillis() - start.getMillis()) / tick.getMillis();
      for (int j = 0; j < rowsPerTick; j++) {
        long id = index * rowsPerTick + j;
        Row digit = digits.get((int) (id % digits.size()));
        // The digit's own values, attached as they are (see ExampleIo.readDigits).
        out.output(Row.withSchema(ExampleIo.DIGIT_SCHEMA).attachValues(id, digit.getInt64("label"), digit.getArray("pixels")));
      }
    }
  }

  /** Passes inferences through; the first with a key of at least {@code firstId} publishes the new model. */
  static final class PublishAfter extends DoFn<Row, Row> {
    private final long firstId;
    private final String source;
    private final String target;

    PublishAfter(long firstId, String source, String target) {
      this.firstId = firstId;
      this.source = source;
      this.target = target;
    }

    @ProcessElement
    public void process(@Element Row inference, OutputReceiver<Row> out) throws IOException {
      Path published = Paths.get(target);
      if (inference.getInt64("key") >= firstId && !Files.exists(published)) {
        // Whole or not at all: workers watching the folder never see a partial file.
        Path partial = Paths.get(target + ".partial");
        Files.copy(Paths.get(source), partial, StandardCopyOption.REPLACE_EXISTING);
        Files.move(partial, published, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
      }
      out.output(inference);
    }
  }

  /** Writes one window's lines, sorted, as a whole file, replacing any earlier attempt. */
  static final class WriteWindow extends DoFn<KV<String, Iterable<String>>, Void> {
    private final String dir;

    WriteWindow(String dir) {
      this.dir = dir;
    }

    @ProcessElement
    public void process(@Element KV<String, Iterable<String>> lines, BoundedWindow window) throws IOException {
      List<String> sorted = new ArrayList<>();
      lines.getValue().forEach(sorted::add);
      sorted.sort(null);
      Path file = Paths.get(dir, ((IntervalWindow) window).start().getMillis() + ".csv");
      Path partial = Paths.get(file + ".partial");
      Files.write(partial, sorted, StandardCharsets.UTF_8);
      Files.move(partial, file, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
    }
  }
}

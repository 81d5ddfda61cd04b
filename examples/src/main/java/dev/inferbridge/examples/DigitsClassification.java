package dev.inferbridge.examples;

import dev.inferbridge.BeamHandlerModel;
import dev.inferbridge.EndpointModel;
import dev.inferbridge.FeatureBlock;
import dev.inferbridge.Inference;
import dev.inferbridge.InferenceResult;
import dev.inferbridge.LocalRun;
import dev.inferbridge.Model;
import dev.inferbridge.ModelOutput;
import dev.inferbridge.SklearnModel;
import dev.inferbridge.Step;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.TreeMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.PipelineResult;
import org.apache.beam.sdk.metrics.MetricNameFilter;
import org.apache.beam.sdk.metrics.MetricQueryResults;
import org.apache.beam.sdk.metrics.MetricResult;
import org.apache.beam.sdk.metrics.MetricsFilter;
import org.apache.beam.sdk.options.Default;
import org.apache.beam.sdk.options.Description;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.options.Validation;
import org.apache.beam.sdk.transforms.Combine;
import org.apache.beam.sdk.transforms.Count;
import org.apache.beam.sdk.transforms.Create;
import org.apache.beam.sdk.transforms.DoFn;
import org.apache.beam.sdk.transforms.MapElements;
import org.apache.beam.sdk.transforms.ParDo;
import org.apache.beam.sdk.transforms.ToJson;
import org.apache.beam.sdk.transforms.join.CoGbkResult;
import org.apache.beam.sdk.transforms.join.CoGroupByKey;
import org.apache.beam.sdk.transforms.join.KeyedPCollectionTuple;
import org.apache.beam.sdk.values.KV;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TupleTag;
import org.apache.beam.sdk.values.TypeDescriptors;

/**
 * Classifies scikit-learn's handwritten digits with a Python model, from a Java pipeline.
 *
 * <p>Reads the held-out rows written by {@code examples/digits/train_model.py}, runs them through
 * {@link Inference} (scale the pixels, {@code predict_proba}, {@code argmax}), joins the
 * predictions with the true labels by key, and prints {@code failures=<f>}, the number of rows
 * that got no inference, then {@code accuracy=<a> expected=<e> rows=<n>}, where {@code expected}
 * is scikit-learn's own score on the same rows. Exits with status 1 if the two differ or a row got
 * no inference.
 *
 * <p>Run it under {@code inferbridge-local}, which starts the expansion and job services:
 *
 * <pre>
 * inferbridge-local -- java -cp ... dev.inferbridge.examples.DigitsClassification --modelDir=DIR
 * </pre>
 */
public final class DigitsClassification {

  /** Options of the example. */
  public interface Options extends PipelineOptions {
    @Description("Directory written by examples/digits/train_model.py")
    @Validation.Required
    String getModelDir();

    void setModelDir(String value);

    @Description("Model file format in the model directory: pickle or joblib")
    @Default.String("pickle")
    String getModelFormat();

    void setModelFormat(String value);

    @Description(
        "If set, the model behind this HTTP endpoint (EndpointModel, POST {\"instances\": ...}) gives "
            + "the class probabilities; the expansion service must allow it (--allow-endpoint)")
    String getEndpoint();

    void setEndpoint(String value);

    @Description(
        "If set, the handler registered under this name by a package installed with the service "
            + "(BeamHandlerModel.registered) serves digits.pkl, giving a vector of class probabilities")
    String getRegisteredHandler();

    void setRegisteredHandler(String value);

    @Description("If set, the model file's SHA-256 digest (SklearnModel.withSha256): another file is refused")
    String getModelSha256();

    void setModelSha256(String value);

    @Description("host:port of the InferBridge expansion service (default: $INFERBRIDGE_EXPANSION_SERVICE)")
    String getExpansionService();

    void setExpansionService(String value);

    @Description("Rows per packed block sent to Python (Inference.withBlockSize); 0: one row per element")
    @Default.Integer(0)
    int getBlockSize();

    void setBlockSize(int value);

    @Description(
        "Rows per FeatureBlock, made from the rows' arrays in Java (Inference.overBlocks, the "
            + "block-level API); 0: one Row per element")
    @Default.Integer(0)
    int getFeatureBlockSize();

    void setFeatureBlockSize(int value);

    @Description("If set, also write one 'key,inference' line per row to this file")
    String getPredictionsFile();

    void setPredictionsFile(String value);

    @Description("If set, also write each failure Row to this file, as one JSON object per line")
    String getFailuresFile();

    void setFailuresFile(String value);
  }

  private DigitsClassification() {}

  public static void main(String[] args) throws Exception {
    Options options =
        PipelineOptionsFactory.fromArgs(LocalRun.withDefaults(args)).withValidation().as(Options.class);
    try (LocalRun local = LocalRun.start(options)) {
      run(options);
    }
  }

  static void run(Options options) throws IOException {
    Path modelDir = Paths.get(options.getModelDir()).toAbsolutePath();
    List<Row> digits = ExampleIo.readDigits(modelDir.resolve("test_rows.csv"));
    double expected = readExpectedScore(modelDir.resolve("expected.json"));
    Path tally = Files.createTempFile("inferbridge-digits", ".txt");
    Path failureCount = Files.createTempFile("inferbridge-digits-failures", ".txt");

    Pipeline pipeline = Pipeline.create(options);
    PCollection<Row> rows = pipeline.apply("Digits", Create.of(digits).withRowSchema(ExampleIo.DIGIT_SCHEMA));

    Model model = model(options, modelDir);
    if (options.getModelSha256() != null) {
      model = model.withSha256(options.getModelSha256());
    }
    // One inference (model, steps, service); Rows name their key and feature fields, blocks carry theirs.
    Inference classify = Inference.of(model).withPreprocess(Step.scale(1.0 / 16)).withPostprocess(Step.argmax());
    if (options.getExpansionService() != null) {
      classify = classify.withExpansionService(options.getExpansionService());
    }
    InferenceResult result;
    if (options.getFeatureBlockSize() > 0) {
      result =
          pipeline
              .apply("DigitBlocks", Create.of(featureBlocks(digits, options.getFeatureBlockSize())))
              .apply("Classify", classify.overBlocks(FeatureBlock.KeyType.INT64));
    } else {
      Inference onRows = classify.withKeyField("id").withFeatureField("pixels");
      if (options.getBlockSize() > 0) {
        onRows = onRows.withBlockSize(options.getBlockSize());
      }
      result = rows.apply("Classify", onRows);
    }
    PCollection<Row> predictions = result.getInferences();
    PCollection<Row> failures = result.getFailures();

    TupleTag<Long> labelTag = new TupleTag<Long>() {};
    TupleTag<Long> predictionTag = new TupleTag<Long>() {};
    KeyedPCollectionTuple.of(labelTag, byId(rows, "id", "label", "Labels"))
        .and(predictionTag, byId(predictions, "key", "inference", "Predictions"))
        .apply("JoinById", CoGroupByKey.create())
        .apply("Score", ParDo.of(new Score(labelTag, predictionTag)))
        .apply("Tally", Combine.globally(new Tally()))
        .apply("WriteTally", ParDo.of(new ExampleIo.WriteText(tally.toString())));
    if (options.getPredictionsFile() != null) {
      predictions
          .apply(
              "FormatPredictions",
              MapElements.into(TypeDescriptors.strings())
                  .via((Row r) -> r.getInt64("key") + "," + r.getInt64("inference")))
          .apply("CollectPredictions", Combine.globally(new ExampleIo.SortedLines()))
          .apply("WritePredictions", ParDo.of(new ExampleIo.WriteText(options.getPredictionsFile())));
    }
    failures
        .apply("CountFailures", Count.globally())
        .apply("FormatFailureCount", MapElements.into(TypeDescriptors.strings()).via(String::valueOf))
        .apply("WriteFailureCount", ParDo.of(new ExampleIo.WriteText(failureCount.toString())));
    if (options.getFailuresFile() != null) {
      failures
          .apply("FailuresToJson", ToJson.of())
          .apply("CollectFailures", Combine.globally(new ExampleIo.SortedLines()))
          .apply("WriteFailures", ParDo.of(new ExampleIo.WriteText(options.getFailuresFile())));
    }

    PipelineResult run = pipeline.run();
    PipelineResult.State state = run.waitUntilFinish();
    if (state != PipelineResult.State.DONE) {
      throw new IllegalStateException("the pipeline ended in state " + state);
    }
    System.out.println("counters: " + counters(run, "InferBridge"));
    // "correct,predicted" as written by the pipeline.
    String[] counts = readAndDelete(tally).split(",");
    long correct = Long.parseLong(counts[0]);
    long predicted = Long.parseLong(counts[1]);
    long failed = Long.parseLong(readAndDelete(failureCount));
    double accuracy = (double) correct / digits.size();
    System.out.println("failures=" + failed);
    System.out.println("accuracy=" + accuracy + " expected=" + expected + " rows=" + predicted);
    if (accuracy != expected || predicted != digits.size()) {
      System.exit(1);
    }
  }

  /** The counters of {@code namespace}, summed over the steps that report them: "name=value ...", by name. */
  private static String counters(PipelineResult run, String namespace) {
    Map<String, Long> sums = new TreeMap<>();
    MetricQueryResults results =
        run.metrics().queryMetrics(MetricsFilter.builder().addNameFilter(MetricNameFilter.inNamespace(namespace)).build());
    for (MetricResult<Long> counter : results.getCounters()) {
      sums.merge(counter.getName().getName(), counter.getAttempted(), Long::sum);
    }
    StringBuilder line = new StringBuilder();
    for (Map.Entry<String, Long> e : sums.entrySet()) {
      line.append(line.length() > 0 ? " " : "").append(e.getKey()).append('=').append(e.getValue());
    }
    return line.toString();
  }

  private static String readAndDelete(Path file) throws IOException {
    String text = new String(Files.readAllBytes(file), StandardCharsets.UTF_8).trim();
    Files.delete(file);
    return text;
  }

  /**
   * The digits as blocks of {@code rowsPerBlock}: ids and pixels in arrays, as a reader of a
   * columnar file would hold them.
   */
  static List<FeatureBlock> featureBlocks(List<Row> digits, int rowsPerBlock) {
    List<FeatureBlock> blocks = new ArrayList<>();
    for (int start = 0; start < digits.size(); start += rowsPerBlock) {
      List<Row> part = digits.subList(start, Math.min(digits.size(), start + rowsPerBlock));
      int width = part.get(0).getArray("pixels").size();
      long[] ids = new long[part.size()];
      double[] pixels = new double[part.size() * width];
      for (int i = 0; i < part.size(); i++) {
        ids[i] = part.get(i).getInt64("id");
        int f = i * width;
        for (Object value : part.get(i).getArray("pixels")) {
          pixels[f++] = value == null ? Double.NaN : (Double) value;
        }
      }
      blocks.add(FeatureBlock.of(ids, pixels, width));
    }
    return blocks;
  }

  /** The model giving each digit's class probabilities. */
  private static Model model(Options options, Path modelDir) {
    if (options.getEndpoint() != null) {
      return EndpointModel.of(options.getEndpoint());
    }
    if (options.getRegisteredHandler() != null) {
      return BeamHandlerModel.registered(options.getRegisteredHandler(), modelDir.resolve("digits.pkl").toString());
    }
    return file(options.getModelFormat(), modelDir).withOutput(ModelOutput.PREDICT_PROBA);
  }

  private static Model file(String format, Path modelDir) {
    switch (format.toLowerCase(Locale.ROOT)) {
      case "pickle":
        return SklearnModel.pickle(modelDir.resolve("digits.pkl").toString());
      case "joblib":
        return SklearnModel.joblib(modelDir.resolve("digits.joblib").toString());
      default:
        throw new IllegalArgumentException("--modelFormat=" + format + " is not supported; allowed: pickle, joblib");
    }
  }

  private static PCollection<KV<Long, Long>> byId(
      PCollection<Row> rows, String keyField, String valueField, String name) {
    return rows.apply(
        name,
        MapElements.into(TypeDescriptors.kvs(TypeDescriptors.longs(), TypeDescriptors.longs()))
            .via((Row r) -> KV.of(r.getInt64(keyField), r.getInt64(valueField))));
  }

  static double readExpectedScore(Path json) throws IOException {
    String text = new String(Files.readAllBytes(json), StandardCharsets.UTF_8);
    Matcher m = Pattern.compile("\"score\":\\s*([0-9.eE+-]+)").matcher(text);
    if (!m.find()) {
      throw new IllegalArgumentException(json + " has no \"score\"; rerun examples/digits/train_model.py");
    }
    return Double.parseDouble(m.group(1));
  }

  /** Scores one id: 1 if predicted correctly, 0 if predicted wrongly, -1 if not predicted. */
  static final class Score extends DoFn<KV<Long, CoGbkResult>, Long> {
    private final TupleTag<Long> labelTag;
    private final TupleTag<Long> predictionTag;

    Score(TupleTag<Long> labelTag, TupleTag<Long> predictionTag) {
      this.labelTag = labelTag;
      this.predictionTag = predictionTag;
    }

    @ProcessElement
    public void process(@Element KV<Long, CoGbkResult> joined, OutputReceiver<Long> out) {
      Long label = joined.getValue().getOnly(labelTag);
      Long prediction = joined.getValue().getOnly(predictionTag, null);
      out.output(prediction == null ? -1L : label.equals(prediction) ? 1L : 0L);
    }
  }

  /** Adds up scores into "correct,predicted". */
  static final class Tally extends Combine.CombineFn<Long, long[], String> {
    @Override
    public long[] createAccumulator() {
      return new long[2];
    }

    @Override
    public long[] addInput(long[] acc, Long score) {
      acc[0] += score == 1L ? 1 : 0;
      acc[1] += score >= 0L ? 1 : 0;
      return acc;
    }

    @Override
    public long[] mergeAccumulators(Iterable<long[]> accs) {
      long[] merged = createAccumulator();
      for (long[] acc : accs) {
        merged[0] += acc[0];
        merged[1] += acc[1];
      }
      return merged;
    }

    @Override
    public String extractOutput(long[] acc) {
      return acc[0] + "," + acc[1];
    }
  }
}

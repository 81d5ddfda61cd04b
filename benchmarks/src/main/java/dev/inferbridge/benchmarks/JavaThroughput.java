package dev.inferbridge.benchmarks;

import dev.inferbridge.FeatureBlock;
import dev.inferbridge.Inference;
import dev.inferbridge.InferenceResult;
import dev.inferbridge.LocalRun;
import dev.inferbridge.SklearnModel;
import dev.inferbridge.Step;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.PipelineResult;
import org.apache.beam.sdk.coders.DoubleCoder;
import org.apache.beam.sdk.coders.IterableCoder;
import org.apache.beam.sdk.coders.VarLongCoder;
import org.apache.beam.sdk.extensions.python.transforms.RunInference;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.transforms.Combine;
import org.apache.beam.sdk.transforms.Count;
import org.apache.beam.sdk.transforms.Create;
import org.apache.beam.sdk.transforms.DoFn;
import org.apache.beam.sdk.transforms.MapElements;
import org.apache.beam.sdk.transforms.ParDo;
import org.apache.beam.sdk.transforms.Reshuffle;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TypeDescriptors;

/**
 * Throughput of a Java pipeline that runs a scikit-learn model on the digits data through
 * cross-language; prints one JSON line to stdout.
 *
 * <p>The pipeline generates {@code --rows} rows itself ({@code --shards} seeds, each expanded by a
 * ParDo; row {@code n} carries digit {@code n mod 1797} of {@code --digits}, the CSV written by
 * {@code bench_models.write_digits_csv} (benchmarks/java_systems.py writes it)), runs the model, and counts the inferences (and sums them,
 * a checksum comparable across systems) with a Combine. The measured time ({@code seconds}) is the
 * wall time of {@code pipeline.run()} until {@code waitUntilFinish()} returns, with the job state
 * polled every {@code --poll-ms} (default 20) before {@code waitUntilFinish()}: Beam's
 * PortableRunner would otherwise only look every 3 s ({@code --poll-ms=0} keeps that behaviour).
 * {@code result_seconds} ends instead when the last result was written (the Java stages run in
 * this JVM), before the job service's teardown (about 5 s on Beam's Python local job service).
 * {@code build_seconds} is the pipeline's construction (with the cross-language expansion) and
 * {@code total_seconds} the whole {@code main}.
 *
 * <p>Flags: {@code --system}, {@code --rows} (20000), {@code --digits=CSV}, {@code
 * --model=PATH[,PATH...]}, {@code --keys} (1), {@code --max-models} (unset), {@code --block-size}
 * (256), {@code --batch-size=MIN,MAX} (Beam's defaults), {@code --shards} (4), {@code
 * --expansion-service=host:port} (InferBridge: else {@code $INFERBRIDGE_EXPANSION_SERVICE}),
 * {@code --poll-ms} (20); any other {@code --name=value} is a Beam option, e.g. {@code
 * --jobEndpoint=host:port} (else {@code $INFERBRIDGE_JOB_ENDPOINT}).
 *
 * <p>Systems ({@code --system}):
 *
 * <ul>
 *   <li>{@code stock-java}: Beam's own Java wrapper {@link RunInference} with
 *       {@code SklearnModelHandlerNumpy} (input {@code Iterable<Double>}, pixels scaled by 1/16 in
 *       Java since the wrapper has no preprocessing), against Beam's stock Python expansion
 *       service ({@code expansion_service_main --fully_qualified_name_glob='*'
 *       --serve_loopback_worker}). Only {@code --keys=1}.
 *   <li>{@code inferbridge-java-rows}: InferBridge's {@link Inference} on Rows {id, segment,
 *       pixels}: key field {@code segment}, {@code Step.scale(1/16)}, {@code PREDICT}.
 *   <li>{@code inferbridge-java-blocks}: the same with {@code withBlockSize(--block-size)}.
 *   <li>{@code inferbridge-java-feature-blocks}: the same rows made as {@link FeatureBlock}s of
 *       {@code --block-size} rows (keys and pixels in arrays, no Row per row) for {@link
 *       Inference#overBlocks}: the block-level Java API.
 *   <li>{@code java-baseline}: the same Rows, counted without inference (each row's pixel count
 *       stands in for its inference): what the Java input and the runner cost on their own.
 * </ul>
 *
 * <p>With {@code --keys=K} (InferBridge only) row {@code n} has segment {@code s<n mod K>}, served
 * by its own model {@code m<i>} ({@code --model} lists K paths, or one used for all K).
 *
 * <p>Exit status: 0 when the count equals {@code --rows} (and no row failed), 1 when not, 2 for a
 * bad flag or an unsupported workload (the JSON line then has an {@code error} field).
 */
public final class JavaThroughput {
  static final String STOCK = "stock-java";
  static final String ROWS = "inferbridge-java-rows";
  static final String BLOCKS = "inferbridge-java-blocks";
  static final String FEATURE_BLOCKS = "inferbridge-java-feature-blocks";
  static final String BASELINE = "java-baseline";
  static final List<String> SYSTEMS = Arrays.asList(BASELINE, STOCK, ROWS, BLOCKS, FEATURE_BLOCKS);

  static final double PIXEL_SCALE = 1.0 / 16;
  static final String EXPANSION_SERVICE_ENV = "INFERBRIDGE_EXPANSION_SERVICE";

  /** The rows InferBridge's systems classify. */
  static final Schema DIGIT_ROW =
      Schema.builder()
          .addInt64Field("id")
          .addStringField("segment")
          .addArrayField("pixels", FieldType.DOUBLE)
          .build();

  /** The output schema stock RunInference is asked for (PredictionResult's example and inference). */
  static final Schema STOCK_OUTPUT =
      Schema.of(
          Schema.Field.of("example", FieldType.array(FieldType.DOUBLE)),
          Schema.Field.of("inference", FieldType.INT64));

  /**
   * When the last result was written ({@link System#nanoTime()}): the Java stages run in this
   * JVM's worker pool, so the final DoFns record it here.
   */
  static final AtomicLong LAST_RESULT_NANOS = new AtomicLong();

  private JavaThroughput() {}


  /** The benchmark's own flags; every other {@code --flag=value} goes to Beam's options. */
  static final class Flags {
    String system;
    long rows = 20000;
    String digits;
    List<String> models = new ArrayList<>();
    int keys = 1;
    int maxModels = 0;
    int blockSize = 256;
    int shards = 4;
    int minBatch = 0;
    int maxBatch = 0;
    long pollMillis = 20;
    String expansionService;
    List<String> beamArgs = new ArrayList<>();

    static Flags parse(String[] args) {
      Flags f = new Flags();
      for (String arg : args) {
        if (!arg.startsWith("--") || !arg.contains("=")) {
          throw new IllegalArgumentException("flags are --name=value; got " + arg);
        }
        String name = arg.substring(2, arg.indexOf('='));
        String value = arg.substring(arg.indexOf('=') + 1);
        switch (name) {
          case "system":
            f.system = value;
            break;
          case "rows":
            f.rows = Long.parseLong(value);
            break;
          case "digits":
            f.digits = value;
            break;
          case "model":
            for (String path : value.split(",")) {
              if (!path.isEmpty()) {
                f.models.add(Paths.get(path).toAbsolutePath().toString());
              }
            }
            break;
          case "keys":
            f.keys = Integer.parseInt(value);
            break;
          case "max-models":
            f.maxModels = Integer.parseInt(value);
            break;
          case "block-size":
            f.blockSize = Integer.parseInt(value);
            break;
          case "shards":
            f.shards = Integer.parseInt(value);
            break;
          case "batch-size":
            String[] parts = value.split(",");
            if (parts.length != 2) {
              throw new IllegalArgumentException("--batch-size=MIN,MAX; got " + value);
            }
            f.minBatch = Integer.parseInt(parts[0].trim());
            f.maxBatch = Integer.parseInt(parts[1].trim());
            break;
          case "poll-ms":
            f.pollMillis = Long.parseLong(value);
            break;
          case "expansion-service":
            f.expansionService = value;
            break;
          default:
            f.beamArgs.add(arg);
        }
      }
      return f;
    }

    String workload() {
      return "digits-keys" + keys;
    }
  }

  public static void main(String[] args) throws Exception {
    long mainStart = System.nanoTime();
    Flags flags;
    try {
      flags = Flags.parse(args);
    } catch (IllegalArgumentException e) {
      System.err.println("JavaThroughput: " + e.getMessage());
      System.exit(2);
      return;
    }
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("system", flags.system);
    out.put("workload", flags.workload());
    out.put("rows", flags.rows);
    out.put("keys", flags.keys);
    String problem = check(flags);
    if (problem != null) {
      out.put("error", problem);
      System.out.println(Json.object(out));
      System.exit(2);
      return;
    }
    if (flags.system.equals(BLOCKS)) {
      out.put("block_size", flags.blockSize);
    }
    if (flags.maxModels > 0) {
      out.put("max_models", flags.maxModels);
    }
    if (flags.maxBatch > 0) {
      out.put("batch_size", flags.minBatch + "," + flags.maxBatch);
    }
    out.put("shards", flags.shards);
    out.put("poll_ms", flags.pollMillis);

    PipelineOptions options;
    try {
      options = PipelineOptionsFactory.fromArgs(LocalRun.withDefaults(flags.beamArgs.toArray(new String[0]))).create();
    } catch (IllegalArgumentException | IllegalStateException e) {
      out.put("error", e.getMessage());
      System.out.println(Json.object(out));
      System.exit(2);
      return;
    }
    LocalRun javaWorkers;
    try {
      javaWorkers = LocalRun.start(options);
    } catch (IllegalArgumentException | IllegalStateException e) {
      // No job service, or another runner: a bad flag.
      out.put("error", e.getMessage());
      System.out.println(Json.object(out));
      System.exit(2);
      return;
    }
    Path tally = Files.createTempFile("javathroughput-tally", ".txt");
    Path failureTally = Files.createTempFile("javathroughput-failures", ".txt");
    double seconds;
    double buildSeconds;
    long runStartNanos;
    try {
      long buildStart = System.nanoTime();
      Pipeline pipeline = Pipeline.create(options);
      build(pipeline, flags, tally.toString(), failureTally.toString());
      buildSeconds = (System.nanoTime() - buildStart) / 1e9;
      long runStart = System.nanoTime();
      runStartNanos = runStart;
      PipelineResult result = pipeline.run();
      if (flags.pollMillis > 0) {
        // Beam's PortableRunner polls the job state every 3 s inside waitUntilFinish(), which
        // would round every measurement up to that grid; getState() asks the job service now.
        while (!result.getState().isTerminal()) {
          Thread.sleep(flags.pollMillis);
        }
      }
      PipelineResult.State state = result.waitUntilFinish();
      seconds = (System.nanoTime() - runStart) / 1e9;
      if (state != PipelineResult.State.DONE) {
        out.put("error", "the pipeline ended in state " + state);
        System.out.println(Json.object(out));
        System.exit(1);
        return;
      }
    } catch (RuntimeException e) {
      // An expansion or pipeline failure: still one JSON line, with the first line of the error.
      e.printStackTrace();
      String message = String.valueOf(e.getMessage());
      out.put("error", e.getClass().getSimpleName() + ": " + message.split("\n", 2)[0]);
      System.out.println(Json.object(out));
      System.exit(1);
      return;
    } finally {
      javaWorkers.close();
    }
    String tallyText = readAndDelete(tally);
    String[] counted = (tallyText.isEmpty() ? "0,0" : tallyText).split(",");
    long count = Long.parseLong(counted[0]);
    double inferenceSum = Double.parseDouble(counted[1]);
    String failureText = readAndDelete(failureTally);
    long failures = failureText.isEmpty() ? 0 : Long.parseLong(failureText);

    out.put("count", count);
    out.put("failures", failures);
    out.put("inference_sum", inferenceSum == Math.rint(inferenceSum) ? (Object) (long) inferenceSum : inferenceSum);
    out.put("seconds", round(seconds));
    out.put("rows_per_sec", round(flags.rows / seconds));
    // From run() to the last result written, without the job service's teardown (its gRPC
    // servers' shutdown grace, about 5 s on Beam's Python local job service) and the final poll.
    double resultSeconds = (LAST_RESULT_NANOS.get() - runStartNanos) / 1e9;
    out.put("result_seconds", round(resultSeconds));
    out.put("result_rows_per_sec", round(flags.rows / resultSeconds));
    out.put("build_seconds", round(buildSeconds));
    out.put("total_seconds", round((System.nanoTime() - mainStart) / 1e9));
    boolean ok = count == flags.rows && failures == 0;
    if (!ok) {
      out.put("error", "counted " + count + " inferences and " + failures + " failures for " + flags.rows + " rows");
    }
    System.out.println(Json.object(out));
    System.out.flush();
    System.exit(ok ? 0 : 1);
  }

  /** Why the flags cannot run, or null. */
  static String check(Flags f) {
    if (f.system == null || !SYSTEMS.contains(f.system)) {
      return "--system must be one of " + SYSTEMS + "; got " + f.system;
    }
    if (f.rows <= 0) {
      return "--rows must be positive";
    }
    if (f.digits == null || !Files.isRegularFile(Paths.get(f.digits))) {
      return "--digits must name the CSV written by bench_models.write_digits_csv; got " + f.digits;
    }
    if (f.models.isEmpty()) {
      return "--model=PATH[,PATH...] is required";
    }
    for (String model : f.models) {
      if (!Files.isRegularFile(Paths.get(model))) {
        return "--model: no file " + model;
      }
    }
    if (f.keys < 1) {
      return "--keys must be at least 1";
    }
    if (f.system.equals(STOCK) && f.keys != 1) {
      return "stock-java supports only --keys=1: Beam's Java RunInference wrapper maps no keys to models "
          + "(that needs a Python loader script returning a KeyedModelHandler)";
    }
    if (f.models.size() != 1 && f.models.size() != f.keys) {
      return "--model lists " + f.models.size() + " paths; give one, or one per key (--keys=" + f.keys + ")";
    }
    if (f.shards < 1) {
      return "--shards must be at least 1";
    }
    if (f.system.equals(STOCK) && f.expansionService == null) {
      return "stock-java needs --expansion-service=host:port of Beam's expansion_service_main";
    }
    return null;
  }

  static void build(Pipeline pipeline, Flags f, String tallyFile, String failureFile) {
    List<Long> shards = new ArrayList<>();
    for (long s = 0; s < f.shards; s++) {
      shards.add(s);
    }
    // Redistributed, so each seed's rows are generated in a bundle of their own runner's choosing:
    // created seeds would otherwise all expand in the one bundle that created them.
    PCollection<Long> seeds =
        pipeline.apply("Seeds", Create.of(shards).withCoder(VarLongCoder.of())).apply("Spread", Reshuffle.viaRandomKey());
    PCollection<Double> inferences;
    if (f.system.equals(STOCK)) {
      PCollection<Iterable<Double>> examples =
          seeds
              .apply("Generate", ParDo.of(new GenerateExamples(f.digits, f.rows, f.shards)))
              .setCoder(IterableCoder.of(DoubleCoder.of()));
      RunInference<Row> runInference =
          RunInference.of("apache_beam.ml.inference.sklearn_inference.SklearnModelHandlerNumpy", STOCK_OUTPUT)
              .withKwarg("model_uri", f.models.get(0));
      if (f.maxBatch > 0) {
        runInference =
            runInference.withKwarg("min_batch_size", f.minBatch).withKwarg("max_batch_size", f.maxBatch);
      }
      inferences =
          examples
              .apply("RunInference", runInference.withExpansionService(f.expansionService))
              .apply("Inference", MapElements.into(TypeDescriptors.doubles()).via((Row r) -> (double) r.getInt64("inference")));
      pipeline.apply("NoFailures", Create.of(0L)).apply("WriteFailureCount", ParDo.of(new WriteText<Long>(failureFile)));
    } else if (f.system.equals(BASELINE)) {
      inferences =
          seeds
              .apply("Generate", ParDo.of(new GenerateRows(f.digits, f.rows, f.shards, f.keys)))
              .setRowSchema(DIGIT_ROW)
              .apply("PixelCount", MapElements.into(TypeDescriptors.doubles()).via((Row r) -> (double) r.getArray("pixels").size()));
      pipeline.apply("NoFailures", Create.of(0L)).apply("WriteFailureCount", ParDo.of(new WriteText<Long>(failureFile)));
    } else {
      InferenceResult result;
      if (f.system.equals(FEATURE_BLOCKS)) {
        result =
            seeds
                .apply("Generate", ParDo.of(new GenerateBlocks(f.digits, f.rows, f.shards, f.keys, f.blockSize)))
                .apply("Inference", inferBridge(f).overBlocks(FeatureBlock.KeyType.STRING));
      } else {
        PCollection<Row> rows =
            seeds
                .apply("Generate", ParDo.of(new GenerateRows(f.digits, f.rows, f.shards, f.keys)))
                .setRowSchema(DIGIT_ROW);
        result = rows.apply("Inference", inferBridge(f));
      }
      inferences =
          result
              .getInferences()
              .apply("Inference", MapElements.into(TypeDescriptors.doubles()).via((Row r) -> toDouble(r.getValue("inference"))));
      result
          .getFailures()
          .apply("CountFailures", Count.globally())
          .apply("WriteFailureCount", ParDo.of(new WriteText<Long>(failureFile)));
    }
    inferences
        .apply("CountAndSum", Combine.globally(new CountAndSum()))
        .apply("WriteTally", ParDo.of(new WriteText<String>(tallyFile)));
  }

  static Inference inferBridge(Flags f) {
    List<SklearnModel> models = new ArrayList<>();
    if (f.keys == 1) {
      models.add(SklearnModel.pickle(f.models.get(0)).withModelId("m0"));
    } else {
      for (int i = 0; i < f.keys; i++) {
        String path = f.models.size() == 1 ? f.models.get(0) : f.models.get(i);
        models.add(SklearnModel.pickle(path).withModelId("m" + i).withKeys(segment(i)));
      }
    }
    Inference inference = Inference.of(models).withPreprocess(Step.scale(PIXEL_SCALE));
    if (!f.system.equals(FEATURE_BLOCKS)) {
      inference = inference.withKeyField("segment").withFeatureField("pixels");
    }
    if (f.maxModels > 0) {
      inference = inference.withMaxModelsPerWorker(f.maxModels);
    }
    if (f.maxBatch > 0) {
      inference = inference.withBatchSize(f.minBatch, f.maxBatch);
    }
    if (f.system.equals(BLOCKS)) {
      inference = inference.withBlockSize(f.blockSize);
    }
    if (f.expansionService != null) {
      inference = inference.withExpansionService(f.expansionService);
    }
    return inference;
  }

  static String segment(long i) {
    return "s" + i;
  }

  static double toDouble(Object value) {
    if (value instanceof Number) {
      return ((Number) value).doubleValue();
    }
    throw new IllegalStateException("inference is not a number: " + value);
  }

  static double round(double value) {
    return Math.round(value * 1000) / 1000.0;
  }

  /** The pixel vectors of {@code digits.csv}: every column named pixel_*. */
  static List<List<Double>> readDigits(String csv, double scale) throws IOException {
    List<String> lines = Files.readAllLines(Paths.get(csv), StandardCharsets.UTF_8);
    String[] header = lines.get(0).split(",", -1);
    List<Integer> pixelColumns = new ArrayList<>();
    for (int i = 0; i < header.length; i++) {
      if (header[i].trim().startsWith("pixel_")) {
        pixelColumns.add(i);
      }
    }
    if (pixelColumns.isEmpty()) {
      throw new IllegalArgumentException(csv + " has no pixel_* columns; write it with bench_models.write_digits_csv");
    }
    List<List<Double>> digits = new ArrayList<>();
    for (String line : lines.subList(1, lines.size())) {
      if (line.isEmpty()) {
        continue;
      }
      String[] cells = line.split(",", -1);
      List<Double> pixels = new ArrayList<>(pixelColumns.size());
      for (int column : pixelColumns) {
        pixels.add(Double.parseDouble(cells[column]) * scale);
      }
      digits.add(Collections.unmodifiableList(pixels));
    }
    return digits;
  }

  /** Rows {@code [seed*rows/shards, (seed+1)*rows/shards)} of the whole run. */
  abstract static class Generate<T> extends DoFn<Long, T> {
    final String digitsCsv;
    final long rows;
    final int shards;
    transient List<List<Double>> digits;

    Generate(String digitsCsv, long rows, int shards) {
      this.digitsCsv = digitsCsv;
      this.rows = rows;
      this.shards = shards;
    }

    abstract double scale();

    abstract T make(long n, List<Double> pixels);

    @Setup
    public void setup() throws IOException {
      digits = readDigits(digitsCsv, scale());
    }

    @ProcessElement
    public void process(@Element Long seed, OutputReceiver<T> out) {
      long start = seed * rows / shards;
      long end = (seed + 1) * rows / shards;
      int size = digits.size();
      for (long n = start; n < end; n++) {
        out.output(make(n, digits.get((int) (n % size))));
      }
    }
  }

  /** stock-java's input: the pixels, scaled by 1/16 here (the wrapper has no preprocessing). */
  static final class GenerateExamples extends Generate<Iterable<Double>> {
    GenerateExamples(String digitsCsv, long rows, int shards) {
      super(digitsCsv, rows, shards);
    }

    @Override
    double scale() {
      return PIXEL_SCALE;
    }

    @Override
    Iterable<Double> make(long n, List<Double> pixels) {
      return pixels;
    }
  }

  /**
   * InferBridge's input: Rows {id, segment, raw pixels}; the composite scales them. The Rows are
   * made with {@code attachValues}, which takes values already of the schema's types as they are
   * ({@code addValues(...).build()} would copy and check each row's 64 pixels again).
   */
  static final class GenerateRows extends Generate<Row> {
    final int keys;
    transient String[] segments;

    GenerateRows(String digitsCsv, long rows, int shards, int keys) {
      super(digitsCsv, rows, shards);
      this.keys = keys;
    }

    @Override
    double scale() {
      return 1.0;
    }

    @Override
    Row make(long n, List<Double> pixels) {
      if (segments == null) {
        segments = new String[keys];
        for (int i = 0; i < keys; i++) {
          segments[i] = segment(i);
        }
      }
      return Row.withSchema(DIGIT_ROW).attachValues(n, segments[(int) (n % keys)], pixels);
    }
  }

  /**
   * {@code inferbridge-java-feature-blocks}' input: the same rows as {@link GenerateRows}, as
   * blocks of {@code blockSize} (the pixels of a block copied from the digits' arrays).
   */
  static final class GenerateBlocks extends DoFn<Long, FeatureBlock> {
    final String digitsCsv;
    final long rows;
    final int shards;
    final int keys;
    final int blockSize;
    transient double[][] digits;

    GenerateBlocks(String digitsCsv, long rows, int shards, int keys, int blockSize) {
      this.digitsCsv = digitsCsv;
      this.rows = rows;
      this.shards = shards;
      this.keys = keys;
      this.blockSize = blockSize;
    }

    @Setup
    public void setup() throws IOException {
      List<List<Double>> read = readDigits(digitsCsv, 1.0);
      digits = new double[read.size()][];
      for (int i = 0; i < digits.length; i++) {
        digits[i] = read.get(i).stream().mapToDouble(Double::doubleValue).toArray();
      }
    }

    @ProcessElement
    public void process(@Element Long seed, OutputReceiver<FeatureBlock> out) {
      long start = seed * rows / shards;
      long end = (seed + 1) * rows / shards;
      int width = digits[0].length;
      for (long first = start; first < end; first += blockSize) {
        int size = (int) Math.min(blockSize, end - first);
        String[] segments = new String[size];
        double[] pixels = new double[size * width];
        for (int i = 0; i < size; i++) {
          long n = first + i;
          segments[i] = segment(n % keys);
          System.arraycopy(digits[(int) (n % digits.length)], 0, pixels, i * width, width);
        }
        out.output(FeatureBlock.of(segments, pixels, width));
      }
    }
  }

  /** "count,sum" of the inferences. */
  static final class CountAndSum extends Combine.CombineFn<Double, double[], String> {
    @Override
    public double[] createAccumulator() {
      return new double[2];
    }

    @Override
    public double[] addInput(double[] acc, Double value) {
      acc[0] += 1;
      acc[1] += value;
      return acc;
    }

    @Override
    public double[] mergeAccumulators(Iterable<double[]> accs) {
      double[] merged = createAccumulator();
      for (double[] acc : accs) {
        merged[0] += acc[0];
        merged[1] += acc[1];
      }
      return merged;
    }

    @Override
    public String extractOutput(double[] acc) {
      return (long) acc[0] + "," + acc[1];
    }
  }

  /** Writes its one input to a local file (the Java worker runs in this JVM). */
  static final class WriteText<T> extends DoFn<T, Void> {
    private final String path;

    WriteText(String path) {
      this.path = path;
    }

    @ProcessElement
    public void process(@Element T value) throws IOException {
      Files.write(Paths.get(path), String.valueOf(value).getBytes(StandardCharsets.UTF_8));
      LAST_RESULT_NANOS.accumulateAndGet(System.nanoTime(), Math::max);
    }
  }

  private static String readAndDelete(Path file) throws IOException {
    String text = new String(Files.readAllBytes(file), StandardCharsets.UTF_8).trim();
    Files.delete(file);
    return text;
  }

  /** Just enough JSON for one flat object of strings and numbers. */
  static final class Json {
    private Json() {}

    static String object(Map<String, Object> fields) {
      StringBuilder s = new StringBuilder("{");
      for (Map.Entry<String, Object> e : fields.entrySet()) {
        if (s.length() > 1) {
          s.append(", ");
        }
        s.append(string(e.getKey())).append(": ");
        Object v = e.getValue();
        if (v instanceof Number) {
          double d = ((Number) v).doubleValue();
          s.append(Double.isFinite(d) ? v.toString() : "null");
        } else if (v == null) {
          s.append("null");
        } else {
          s.append(string(v.toString()));
        }
      }
      return s.append("}").toString();
    }

    static String string(String value) {
      StringBuilder s = new StringBuilder("\"");
      for (char c : value.toCharArray()) {
        switch (c) {
          case '"':
            s.append("\\\"");
            break;
          case '\\':
            s.append("\\\\");
            break;
          case '\n':
            s.append("\\n");
            break;
          default:
            if (c < 0x20) {
              s.append(String.format(Locale.ROOT, "\\u%04x", (int) c));
            } else {
              s.append(c);
            }
        }
      }
      return s.append('"').toString();
    }
  }
}

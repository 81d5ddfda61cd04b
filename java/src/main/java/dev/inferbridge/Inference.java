package dev.inferbridge;

import static dev.inferbridge.InferenceConfig.ACCELERATOR;
import static dev.inferbridge.InferenceConfig.BLOCK_SIZE;
import static dev.inferbridge.InferenceConfig.EXPANSION_CLIENT;
import static dev.inferbridge.InferenceConfig.EXPANSION_SERVICE;
import static dev.inferbridge.InferenceConfig.FEATURE_FIELDS;
import static dev.inferbridge.InferenceConfig.FEATURE_METHOD;
import static dev.inferbridge.InferenceConfig.KEY_FIELD;
import static dev.inferbridge.InferenceConfig.LOCAL_PYTHON;
import static dev.inferbridge.InferenceConfig.MAX_BATCH_DURATION;
import static dev.inferbridge.InferenceConfig.MAX_BATCH_SIZE;
import static dev.inferbridge.InferenceConfig.MAX_MODELS_PER_WORKER;
import static dev.inferbridge.InferenceConfig.METRICS_NAMESPACE;
import static dev.inferbridge.InferenceConfig.MIN_BATCH_SIZE;
import static dev.inferbridge.InferenceConfig.MIN_RAM;
import static dev.inferbridge.InferenceConfig.MODELS;
import static dev.inferbridge.InferenceConfig.MODEL_UPDATES;
import static dev.inferbridge.InferenceConfig.PAD_VALUE;
import static dev.inferbridge.InferenceConfig.PASSTHROUGH_FIELDS;
import static dev.inferbridge.InferenceConfig.POSTPROCESS;
import static dev.inferbridge.InferenceConfig.PREPROCESS;
import static dev.inferbridge.InferenceConfig.SERVICE_CREDENTIALS;
import static dev.inferbridge.InferenceConfig.VARIABLE_LENGTH;
import static dev.inferbridge.InferenceConfig.WATCH_INTERVAL;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.EnumSet;
import java.util.HashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.regex.Pattern;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.schemas.Schema.TypeName;
import org.apache.beam.sdk.transforms.DoFn;
import org.apache.beam.sdk.transforms.Flatten;
import org.apache.beam.sdk.transforms.PTransform;
import org.apache.beam.sdk.transforms.ParDo;
import org.apache.beam.sdk.transforms.resourcehints.ResourceHints;
import org.apache.beam.sdk.util.construction.ExpansionServiceClientFactory;
import org.apache.beam.sdk.util.construction.External;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.PCollectionList;
import org.apache.beam.sdk.values.PCollectionTuple;
import org.apache.beam.sdk.values.PInput;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TupleTag;
import org.apache.beam.sdk.values.TupleTagList;
import org.joda.time.Duration;

/**
 * Runs one model, or many keyed models, on schema'd Rows through InferBridge's Python inference
 * composite.
 *
 * <p>Each input Row gives a key ({@link #withKeyField}) and features ({@link #withFeatureField}:
 * an array of numbers, or several numeric fields). The key's string form picks the model ({@link
 * Model#withKeys}); the features go through the preprocessing steps in order, then Beam's Python
 * RunInference with that model, then the postprocessing steps in order. Every input Row gives
 * exactly one output Row in the {@link InferenceResult}: an inference, or a failure.
 *
 * <p>{@link InferenceResult#getInferences()} has the schema {@link #outputSchema(Schema)}:
 *
 * <ul>
 *   <li>{@code key}: the input key (STRING, or INT64 for integer keys);
 *   <li>{@code example}: the model input after preprocessing (ARRAY&lt;DOUBLE&gt;);
 *   <li>{@code inference}: the result, typed by the model output and the last step ({@link
 *       InferenceKind}: e.g. INT64 after {@link Step#argmax()}, STRING after {@link Step#labels},
 *       MAP&lt;STRING, DOUBLE&gt; after {@link Step#topK});
 *   <li>{@code model_id}: the model that made the inference;
 *   <li>then the {@link #withPassthroughFields passthrough fields}, with their input types.
 * </ul>
 *
 * <p>With {@link #withBlockSize} (the packed-blocks path, for cheap models), the Rows travel to
 * Python in blocks and the inference Rows have no {@code example} field, and {@code key} keeps the
 * input key's type (e.g. INT32): {@code key}, {@code inference}, {@code model_id}, then the
 * passthrough fields.
 *
 * <p>{@link InferenceResult#getFailures()} has the schema {@link #FAILURE_SCHEMA}: the input Rows
 * that could not be read, routed, preprocessed, inferred or postprocessed, with the stage and the
 * error.
 *
 * <pre>{@code
 * InferenceResult result = rows.apply(
 *     Inference.of(
 *             SklearnModel.pickle("/models/a.pkl").withOutput(ModelOutput.PREDICT_PROBA).withModelId("a").withKeys("a"),
 *             OnnxModel.of("/models/b.onnx").withModelId("b")) // serves every other key
 *         .withKeyField("variant")
 *         .withFeatureField("pixels")
 *         .withPassthroughFields("id", "label")
 *         .withPreprocess(Step.scale(1.0 / 16))
 *         .withPostprocess(Step.argmax(), Step.labels("zero", "one", "two"))
 *         .withBatchSize(8, 64)
 *         .withExpansionService("localhost:8097"));
 * PCollection<Row> predictions = result.getInferences();
 * PCollection<Row> failures = result.getFailures();
 * }</pre>
 *
 * <p>The pipeline needs a portable runner and an InferBridge expansion service, found in this
 * order: the address given to {@link #withExpansionService}; a service this JVM starts from the
 * Python environment given to {@link #withLocalExpansionService}; the address in {@value
 * #EXPANSION_SERVICE_ENV}; a service this JVM starts from the Python environment (virtualenv
 * directory or Python executable) in {@value PythonEnvironment#PYTHON_ENV}. A service this JVM
 * starts runs until the JVM exits. {@code inferbridge-local -- <command>} starts an expansion
 * service and a job service for local runs and sets the variables. A service that requires a
 * bearer token or TLS is reached with {@link #withServiceCredentials}, or the credentials in
 * {@value ServiceCredentials#AUTH_TOKEN_ENV}, {@value ServiceCredentials#AUTH_TOKEN_FILE_ENV} and
 * {@value ServiceCredentials#TLS_CA_FILE_ENV}.
 *
 * <p>Every {@code withX} method returns a new transform and checks its argument at once; settings
 * that depend on the input schema are checked when the transform is applied.
 */
public final class Inference extends PTransform<PCollection<Row>, InferenceResult> {
  private static final long serialVersionUID = 1L;

  /** The environment variable that names the expansion service when none is configured. */
  public static final String EXPANSION_SERVICE_ENV = "INFERBRIDGE_EXPANSION_SERVICE";

  /**
   * The schema of {@link InferenceResult#getFailures()}, one Row per input Row without an
   * inference:
   *
   * <ul>
   *   <li>{@code stage}: where it failed: {@code input}, {@code routing}, {@code preprocess},
   *       {@code inference}, {@code postprocess} or {@code output};
   *   <li>{@code step}: the name of the step that failed, or null outside a step;
   *   <li>{@code error_type}: the kind of error, e.g. the Python exception's class name;
   *   <li>{@code message}: the error message;
   *   <li>{@code element}: the input Row as text (a JSON object of its fields);
   *   <li>{@code key}: the input key as a string, or null when it could not be read;
   *   <li>{@code model_id}: the model the Row was routed to, or null before routing.
   * </ul>
   */
  public static final Schema FAILURE_SCHEMA =
      Schema.builder()
          .addStringField("stage")
          .addNullableField("step", FieldType.STRING)
          .addStringField("error_type")
          .addStringField("message")
          .addStringField("element")
          .addNullableField("key", FieldType.STRING)
          .addNullableField("model_id", FieldType.STRING)
          .build();

  /** The input tag of the Rows when model updates are a second input of the composite. */
  static final TupleTag<Row> ROWS_TAG = new TupleTag<>("rows");

  /** The input tag of the model updates; the Python composite expects these two tags. */
  static final TupleTag<Row> MODEL_UPDATES_TAG = new TupleTag<>("model_updates");

  /** The blocks {@link PackBlocks} emits. */
  static final TupleTag<Row> BLOCKS_TAG = new TupleTag<Row>("blocks") {};

  /** The Rows {@link PackBlocks} could not pack, as failure Rows. */
  static final TupleTag<Row> PACK_FAILURES_TAG = new TupleTag<Row>("pack_failures") {};

  /** The fields every inference Row starts with; passthrough fields may not reuse them. */
  static final List<String> OUTPUT_FIELDS =
      Collections.unmodifiableList(Arrays.asList("key", "example", "inference", "model_id"));

  private static final Set<TypeName> KEY_TYPES =
      EnumSet.of(TypeName.STRING, TypeName.INT64, TypeName.INT32, TypeName.INT16, TypeName.BYTE);

  // What the service refuses, refused here first (bounds.py, spec.check_resource_hints).
  private static final int LARGEST_BATCH = 1_000_000;
  private static final long LONGEST_BATCH_WAIT_MILLIS = 3_600_000L;
  private static final int MAX_MIN_RAM_CHARS = 32;
  private static final Pattern MEMORY_SIZE = Pattern.compile("[0-9]+(\\.[0-9]+)? ?([KMGTP]i?B|B)");
  private static final int MAX_ACCELERATOR_CHARS = 256;

  /** Every setting of this transform, sent ones and Java-only ones (see {@link InferenceConfig}). */
  private final InferenceConfig config;

  private Inference(InferenceConfig config) {
    this.config = config;
  }

  /** This transform with {@code setting} changed; every {@code withX} method returns one. */
  private <T> Inference with(InferenceConfig.Setting<T> setting, T value) {
    return new Inference(config.with(setting, value));
  }

  /** Inference with one model, which serves every key unless it has {@link Model#withKeys keys}. */
  public static Inference of(Model model) {
    return of(Collections.singletonList(model));
  }

  /**
   * Inference with several models, each serving the keys it {@link Model#withKeys lists}; at most
   * one model lists no keys and serves every other key (without one, an unmapped key is a failure
   * of stage {@code routing}). The models need distinct ids ({@link Model#withModelId}; the URI by
   * default) and must give the same kind of output, so that the output schema is fixed.
   */
  public static Inference of(Model... models) {
    if (models == null) {
      throw new IllegalArgumentException("Inference.of(): models must not be null");
    }
    return of(Arrays.asList(models));
  }

  /** Inference with the {@code models} of the list; see {@link #of(Model...)}. */
  public static Inference of(List<? extends Model> models) {
    return new Inference(InferenceConfig.DEFAULTS.with(MODELS, checkModels(models)));
  }

  private static List<Model> checkModels(List<? extends Model> models) {
    if (models == null || models.isEmpty()) {
      throw new IllegalArgumentException(
          "Inference.of(): give at least one model, e.g. SklearnModel.pickle(uri)");
    }
    Map<String, Integer> ids = new HashMap<>();
    Map<String, Integer> owners = new HashMap<>();
    List<Integer> defaults = new ArrayList<>();
    for (int i = 0; i < models.size(); i++) {
      Model model = models.get(i);
      if (model == null) {
        throw new IllegalArgumentException(
            "Inference.of(): models[" + i + "] is null; create models with e.g. SklearnModel.pickle(uri)");
      }
      Integer used = ids.put(model.id(), i);
      if (used != null) {
        throw new IllegalArgumentException(
            "Inference.of(): models[" + i + "] has the model id \"" + model.id() + "\", already used by models["
                + used + "]; give each model a distinct id with withModelId()");
      }
      if (model.getKeys().isEmpty()) {
        defaults.add(i);
      }
      for (String key : model.getKeys()) {
        Integer owner = owners.put(key, i);
        if (owner != null) {
          throw new IllegalArgumentException(
              "Inference.of(): key \"" + key + "\" is served by models[" + owner + "] and models[" + i
                  + "]; each key may be served by one model only");
        }
      }
    }
    if (defaults.size() > 1) {
      throw new IllegalArgumentException(
          "Inference.of(): models " + defaults + " have no keys, so each would be the default model; "
              + "give all but one of them keys with withKeys() (the one without keys serves every "
              + "unmapped key)");
    }
    InferenceKind kind = models.get(0).getOutput().kind();
    for (Model model : models) {
      if (model.getOutput().kind() != kind) {
        List<String> described = new ArrayList<>();
        for (int i = 0; i < models.size(); i++) {
          ModelOutput output = models.get(i).getOutput();
          described.add("models[" + i + "] gives a " + output.kind().wireName() + " (" + output + ")");
        }
        throw new IllegalArgumentException(
            "Inference.of(): all models must give the same kind of output so the output schema is "
                + "fixed: " + String.join(", ", described) + "; choose outputs of one kind with withOutput()");
      }
    }
    return Collections.unmodifiableList(new ArrayList<Model>(models));
  }

  /** The input field whose value keys each inference and picks its model: a string or integer field. Required. */
  public Inference withKeyField(String keyField) {
    return with(KEY_FIELD, requireName("withKeyField()", keyField));
  }

  /** The input field holding the features: an array of numbers (or a numeric field). Required, or {@link #withFeatureFields}. */
  public Inference withFeatureField(String featureField) {
    List<String> fields = Collections.singletonList(requireName("withFeatureField()", featureField));
    return new Inference(config.with(FEATURE_FIELDS, fields).with(FEATURE_METHOD, "withFeatureField"));
  }

  /**
   * The input fields holding the features, concatenated in this order: numeric fields or arrays
   * of numbers. Replaces {@link #withFeatureField}.
   */
  public Inference withFeatureFields(String... featureFields) {
    List<String> fields = names("withFeatureFields()", featureFields);
    if (fields.isEmpty()) {
      throw new IllegalArgumentException("withFeatureFields(): name at least one input field");
    }
    return new Inference(config.with(FEATURE_FIELDS, fields).with(FEATURE_METHOD, "withFeatureFields"));
  }

  /**
   * Input fields copied to each inference Row after {@code model_id}, with their input types
   * (e.g. an id or a label to evaluate against). They may not be named {@code key}, {@code
   * example}, {@code inference} or {@code model_id}.
   */
  public Inference withPassthroughFields(String... fields) {
    List<String> names = names("withPassthroughFields()", fields);
    for (String field : names) {
      if (OUTPUT_FIELDS.contains(field)) {
        throw new IllegalArgumentException(
            "withPassthroughFields(): \"" + field + "\" clashes with an output field; output fields are "
                + String.join(", ", OUTPUT_FIELDS));
      }
    }
    return with(PASSTHROUGH_FIELDS, names);
  }

  /** Steps applied to the features before the model, in the order given; replaces earlier ones. */
  public Inference withPreprocess(Step... steps) {
    List<Step> checked = Step.list("withPreprocess()", steps);
    StepCatalog.checkStage("withPreprocess()", StepCatalog.PREPROCESS, checked);
    return with(PREPROCESS, checked);
  }

  /**
   * Steps applied to the model's result, in the order given; replaces earlier ones. Each step
   * must take the kind of value it receives (e.g. {@link Step#argmax()} a vector), and the last
   * one types the inference.
   */
  public Inference withPostprocess(Step... steps) {
    List<Step> checked = Step.list("withPostprocess()", steps);
    StepCatalog.checkStage("withPostprocess()", StepCatalog.POSTPROCESS, checked);
    StepCatalog.kindAfter(config.get(MODELS).get(0).getOutput(), checked);
    return with(POSTPROCESS, checked);
  }

  /**
   * The smallest and largest number of examples per model call (Beam's {@code BatchElements}),
   * each 1 to 1,000,000.
   */
  public Inference withBatchSize(int minSize, int maxSize) {
    if (minSize < 1 || maxSize < 1) {
      throw new IllegalArgumentException(
          "withBatchSize(" + minSize + ", " + maxSize + "): sizes must be positive integers");
    }
    if (maxSize > LARGEST_BATCH) {
      throw new IllegalArgumentException(
          "withBatchSize(" + minSize + ", " + maxSize + "): sizes must be at most " + LARGEST_BATCH);
    }
    if (minSize > maxSize) {
      throw new IllegalArgumentException(
          "withBatchSize(" + minSize + ", " + maxSize + "): minSize is larger than maxSize; make "
              + "minSize <= maxSize");
    }
    return new Inference(config.with(MIN_BATCH_SIZE, (long) minSize).with(MAX_BATCH_SIZE, (long) maxSize));
  }

  /**
   * Sends the Rows to Python packed in blocks of up to {@code rowsPerBlock} Rows (1 to
   * 1,000,000), one block Row of column arrays each, and unpacks the results in Java: for cheap
   * models, where the per-Row cost of the cross-language path dominates. Rows that cannot be
   * packed (a null key or feature field, a null inside a feature array, no features) are
   * failures of stage {@code input} at once, as on the Python row path.
   *
   * <p>The inference Rows then have no {@code example} field: {@code key} (the input key's type),
   * {@code inference}, {@code model_id} and the passthrough fields (see {@link #outputSchema}).
   * The inference must be a vector, number, integer or label (a map, e.g. after {@link
   * Step#topK}, needs the row path). Blocks never span windows or bundles; a block is sent when
   * full, when the next Row has another number of features, and at the end of the bundle, with
   * the smallest timestamp of its Rows, which each of its inference Rows then has. Features are
   * sent as float64; a nested array is flattened row-major (restore its shape with {@link
   * Step#reshape}).
   *
   * <pre>{@code
   * rows.apply(Inference.of(SklearnModel.pickle("/models/fraud.pkl")).withKeyField("id").withFeatureField("x")
   *     .withBlockSize(1000));
   * }</pre>
   */
  public Inference withBlockSize(int rowsPerBlock) {
    if (rowsPerBlock < 1 || rowsPerBlock > Blocks.MAX_ROWS_PER_BLOCK) {
      throw new IllegalArgumentException(
          "withBlockSize(" + rowsPerBlock + "): rowsPerBlock must be between 1 and " + Blocks.MAX_ROWS_PER_BLOCK);
    }
    return with(BLOCK_SIZE, rowsPerBlock);
  }

  /**
   * This inference on {@link FeatureBlock}s rather than Rows: many rows per element, as the
   * arrays a reader already holds, with no per-row work in Java. Keys are all {@code keyType};
   * the inference Rows are {@code key}, {@code inference}, {@code model_id} (as with {@link
   * #withBlockSize}, which this path shares past the packing), and every row a model cannot
   * serve (a NaN feature, an unmapped key, a failing step) is a failure Row of its own.
   *
   * <pre>{@code
   * PCollection<FeatureBlock> blocks = ...; // e.g. FeatureBlock.of(ids, pixels, 64) per Parquet row group
   * InferenceResult result = blocks.apply(
   *     Inference.of(SklearnModel.pickle("/models/digits.pkl")).overBlocks(FeatureBlock.KeyType.INT64));
   * }</pre>
   *
   * <p>A block carries its own keys and features: withKeyField, withFeatureField(s),
   * withPassthroughFields and withBlockSize do not apply and are refused.
   */
  public BlockInference overBlocks(FeatureBlock.KeyType keyType) {
    if (keyType == null) {
      throw new IllegalArgumentException("overBlocks(): keyType must be INT64 or STRING, got null");
    }
    String method = "overBlocks(" + keyType + ")";
    if (config.get(KEY_FIELD) != null || config.get(FEATURE_FIELDS) != null
        || !config.get(PASSTHROUGH_FIELDS).isEmpty() || config.get(BLOCK_SIZE) != null) {
      throw new IllegalArgumentException(
          "Inference: " + method + ": a FeatureBlock carries its own keys and features; remove "
              + "withKeyField(), withFeatureField(s)(), withPassthroughFields() and withBlockSize(), "
              + "which are for Rows");
    }
    Inference blocks =
        new Inference(
            config.with(KEY_FIELD, Blocks.KEY).with(FEATURE_FIELDS, Collections.singletonList(Blocks.FEATURES)));
    blocks.checkBlocks(method);
    return new BlockInference(blocks, keyType);
  }

  /**
   * The longest a batch waits to fill up, at most an hour; switches to Beam's stateful batching,
   * for streaming pipelines.
   */
  public Inference withMaxBatchDuration(Duration duration) {
    requirePositive("withMaxBatchDuration()", duration);
    if (duration.getMillis() > LONGEST_BATCH_WAIT_MILLIS) {
      throw new IllegalArgumentException(
          "withMaxBatchDuration(" + duration + "): the duration must be at most an hour (PT3600S)");
    }
    return with(MAX_BATCH_DURATION, duration);
  }

  /**
   * How examples of different shapes in a batch reach the model: {@link VariableLength#BUCKET}
   * (the default: one model call per shape) or {@link VariableLength#PAD} (padded with 0 to the
   * longest).
   */
  public Inference withVariableLength(VariableLength mode) {
    if (mode == null) {
      throw new IllegalArgumentException(
          "withVariableLength(): mode must not be null; allowed: " + Model.names(Arrays.asList(VariableLength.values())));
    }
    return new Inference(config.with(VARIABLE_LENGTH, mode).with(PAD_VALUE, 0.0));
  }

  /** {@link VariableLength#PAD} with {@code padValue}: pads the last axis to the longest in the batch. */
  public Inference withVariableLength(VariableLength mode, double padValue) {
    if (mode == null) {
      return withVariableLength(null);
    }
    if (mode != VariableLength.PAD) {
      throw new IllegalArgumentException(
          "withVariableLength(" + mode + ", " + padValue + "): a pad value is only for PAD; use "
              + "withVariableLength(" + mode + ")");
    }
    if (Double.isNaN(padValue) || Double.isInfinite(padValue)) {
      throw new IllegalArgumentException(
          "withVariableLength(PAD, " + padValue + "): padValue must be a finite number");
    }
    return new Inference(config.with(VARIABLE_LENGTH, mode).with(PAD_VALUE, padValue));
  }

  /**
   * At most {@code count} models stay loaded per model manager (Beam's {@code
   * max_models_per_worker_hint}); the real bound is {@code count} times the number of DoFn
   * instances per worker.
   */
  public Inference withMaxModelsPerWorker(int count) {
    if (count < 1) {
      throw new IllegalArgumentException(
          "withMaxModelsPerWorker(" + count + "): count must be a positive integer");
    }
    return with(MAX_MODELS_PER_WORKER, (long) count);
  }

  /** The Beam resource hint {@code min_ram} of the inference step, e.g. {@code 4GB} or {@code 512MiB}. */
  public Inference withMinRam(String minRam) {
    if (minRam == null || minRam.length() > MAX_MIN_RAM_CHARS || !MEMORY_SIZE.matcher(minRam).matches()) {
      throw new IllegalArgumentException(
          "withMinRam(" + Model.quote(minRam) + "): not a memory size; use a number and a unit (B, KB, MB, GB, "
              + "TB, PB, KiB, MiB, GiB, TiB, PiB) in at most " + MAX_MIN_RAM_CHARS + " characters, e.g. \"4GB\" "
              + "or \"512MiB\"");
    }
    try {
      ResourceHints.create().withMinRam(minRam);
    } catch (RuntimeException e) {
      throw new IllegalArgumentException(
          "withMinRam(" + Model.quote(minRam) + "): not a memory size (" + e.getMessage()
              + "); use e.g. \"4GB\" or \"512MiB\"",
          e);
    }
    return with(MIN_RAM, minRam);
  }

  /**
   * The Beam resource hint {@code accelerator}: {@code type:TYPE}, then {@code ;}-separated
   * {@code count:N} (N at least 1) and flags, e.g. {@code type:nvidia-tesla-t4;count:1;install-nvidia-driver}.
   */
  public Inference withAccelerator(String accelerator) {
    requireName("withAccelerator()", accelerator);
    if (!isAcceleratorHint(accelerator)) {
      String shown = accelerator.length() > 80 ? accelerator.substring(0, 80) + "..." : accelerator;
      throw new IllegalArgumentException(
          "withAccelerator(" + Model.quote(shown) + "): not an accelerator hint; allowed: \"type:TYPE\" then "
              + "\";\"-separated options, each once: \"count:N\" (1 <= N <= " + Integer.MAX_VALUE + ") and flags, "
              + "in at most " + MAX_ACCELERATOR_CHARS + " printable ASCII characters, e.g. "
              + "\"type:nvidia-tesla-t4;count:1;install-nvidia-driver\"");
    }
    return with(ACCELERATOR, accelerator);
  }

  /** What the service accepts (spec.check_resource_hints): a type, a positive count if any. */
  private static boolean isAcceleratorHint(String hint) {
    if (hint.length() > MAX_ACCELERATOR_CHARS || !hint.chars().allMatch(c -> c >= 0x20 && c < 0x7f)) {
      return false;
    }
    Map<String, String> parts = new HashMap<>();
    for (String part : hint.split(";", -1)) {
      int colon = part.indexOf(':');
      String name = colon < 0 ? part : part.substring(0, colon);
      if (parts.put(name, colon < 0 ? "" : part.substring(colon + 1)) != null) {
        return false; // an option given twice
      }
    }
    String count = parts.getOrDefault("count", "1");
    if (parts.getOrDefault("type", "").isEmpty() || !count.matches("[0-9]{1,10}")) {
      return false;
    }
    long n = Long.parseLong(count);
    return n >= 1 && n <= Integer.MAX_VALUE;
  }

  /** The namespace of the composite's metrics; default {@code InferBridge}. */
  public Inference withMetricsNamespace(String namespace) {
    return with(METRICS_NAMESPACE, requireName("withMetricsNamespace()", namespace));
  }

  /** How often each model's {@link Model#withWatchPattern watch pattern} is checked; default 360 s. */
  public Inference withWatchInterval(Duration interval) {
    return with(WATCH_INTERVAL, requirePositive("withWatchInterval()", interval));
  }

  /**
   * Model updates: Rows with STRING fields {@code model_id} and {@code uri}; each replaces the
   * file of the model with that id while the pipeline runs (streaming). An update that does not
   * load is logged and counted, and the previous model keeps serving. The updates go to the
   * composite as a second input, tagged {@code model_updates}.
   *
   * <pre>{@code
   * PCollection<Row> updates = ...; // e.g. from Pub/Sub, with schema {model_id: STRING, uri: STRING}
   * rows.apply(Inference.of(model.withModelId("digits")).withModelUpdates(updates)...);
   * }</pre>
   */
  public Inference withModelUpdates(PCollection<Row> updates) {
    if (updates == null) {
      throw new IllegalArgumentException("withModelUpdates(): updates must not be null");
    }
    Schema schema = updates.hasSchema() ? updates.getSchema() : null;
    for (String field : Arrays.asList("model_id", "uri")) {
      if (schema == null || !schema.hasField(field)
          || schema.getField(field).getType().getTypeName() != TypeName.STRING) {
        throw new IllegalArgumentException(
            "withModelUpdates(): the updates must be Rows with the STRING fields model_id and uri; "
                + "got " + (schema == null ? "a PCollection without a schema" : "Rows with the fields "
                + describeFields(schema)));
      }
    }
    return with(MODEL_UPDATES, updates);
  }

  /**
   * The {@code host:port} of a running InferBridge expansion service. Takes precedence over
   * {@link #withLocalExpansionService} and the environment variables.
   */
  public Inference withExpansionService(String hostPort) {
    if (!ExpansionService.isAddress(hostPort)) {
      throw new IllegalArgumentException(
          "withExpansionService(): expected host:port, e.g. localhost:8097, got " + hostPort);
    }
    return with(EXPANSION_SERVICE, hostPort);
  }

  /**
   * Expands through an InferBridge expansion service that this JVM starts from {@code python}
   * when the transform is applied, unless it already runs one for an equal environment, and
   * stops when the JVM exits (its worker pool runs the Python stages, so it lives as long as the
   * JVM). See {@link PythonEnvironment#startExpansionService()}. An address given to {@link
   * #withExpansionService} takes precedence.
   *
   * <pre>{@code
   * Inference.of(SklearnModel.pickle("/models/digits.pkl"))
   *     .withKeyField("id")
   *     .withFeatureField("pixels")
   *     .withLocalExpansionService(PythonEnvironment.virtualenv("/opt/venv").withTrustedModelRoots("/models"));
   * }</pre>
   */
  public Inference withLocalExpansionService(PythonEnvironment python) {
    if (python == null) {
      throw new IllegalArgumentException(
          "withLocalExpansionService(): python must not be null; use e.g. PythonEnvironment.virtualenv(\"/path/to/venv\")");
    }
    return with(LOCAL_PYTHON, python);
  }

  /**
   * How to authenticate to the expansion service and check its identity: a bearer token, TLS, or
   * both (see {@link ServiceCredentials}). Without this, the environment gives them ({@link
   * ServiceCredentials#fromEnvironment()}: {@value ServiceCredentials#AUTH_TOKEN_ENV}, {@value
   * ServiceCredentials#AUTH_TOKEN_FILE_ENV}, {@value ServiceCredentials#TLS_CA_FILE_ENV});
   * {@link ServiceCredentials#none()} ignores the environment.
   *
   * <pre>{@code
   * Inference.of(SklearnModel.pickle("/models/digits.pkl"))
   *     .withKeyField("id")
   *     .withFeatureField("pixels")
   *     .withExpansionService("inference.internal:8097")
   *     .withServiceCredentials(
   *         ServiceCredentials.tls("/etc/inferbridge/ca.pem").withTokenFromFile("/run/secrets/inferbridge-token"));
   * }</pre>
   */
  public Inference withServiceCredentials(ServiceCredentials credentials) {
    if (credentials == null) {
      throw new IllegalArgumentException(
          "withServiceCredentials(): credentials must not be null; use e.g. ServiceCredentials.token(token), "
              + "ServiceCredentials.tls(\"/path/to/ca.pem\") or ServiceCredentials.none()");
    }
    return with(SERVICE_CREDENTIALS, credentials);
  }

  /** Expands through {@code client} instead of a gRPC connection; for tests. */
  Inference withExpansionClient(ExpansionServiceClientFactory client) {
    return with(EXPANSION_CLIENT, client);
  }

  /**
   * The schema of the inference Rows for input Rows of {@code inputSchema}; fails as {@link
   * #expand} does when the settings do not fit the input.
   *
   * <p>With {@link #withBlockSize}: {@code key} (the input key field's type, not null), {@code
   * inference} (ARRAY&lt;DOUBLE&gt;, DOUBLE, INT64 or STRING), {@code model_id} STRING, then the
   * passthrough fields with their input types; no {@code example}. An inference of kind map
   * (MAP&lt;STRING, DOUBLE&gt;) fails here, as do passthrough fields named like a field of the
   * blocks ({@code features}, {@code feature_count}, {@code inference_width}).
   */
  public Schema outputSchema(Schema inputSchema) {
    checkRequired();
    checkInput(inputSchema);
    String keyField = config.get(KEY_FIELD);
    List<String> passthroughFields = config.get(PASSTHROUGH_FIELDS);
    if (config.get(BLOCK_SIZE) != null) {
      checkBlocks("withBlockSize(" + config.get(BLOCK_SIZE) + ")");
      return Blocks.unpackedSchema(inputSchema, keyField, inferenceKind(), passthroughFields);
    }
    FieldType keyType =
        inputSchema.getField(keyField).getType().getTypeName() == TypeName.STRING
            ? FieldType.STRING
            : FieldType.INT64;
    Schema.Builder schema =
        Schema.builder()
            .addField("key", keyType)
            .addArrayField("example", FieldType.DOUBLE)
            .addField("inference", inferenceKind().fieldType())
            .addStringField("model_id");
    for (String field : passthroughFields) {
      schema.addField(field, inputSchema.getField(field).getType());
    }
    return schema.build();
  }

  @Override
  public InferenceResult expand(PCollection<Row> input) {
    checkRequired();
    if (!input.hasSchema()) {
      throw new IllegalArgumentException(
          "Inference: the input PCollection has no schema; give it one, e.g. with setRowSchema()");
    }
    Schema schema = input.getSchema();
    Schema expected = outputSchema(schema);
    checkModelUpdates(input.getPipeline());
    ServiceCredentials credentials = credentials();
    String endpoint = endpoint();
    if (config.get(BLOCK_SIZE) != null) {
      return expandBlocks(input, expected, credentials, endpoint);
    }
    PCollectionTuple outputs =
        applyExternal("RunInference", InferenceConfig.RUN_INFERENCE_URN, externalInput(input), credentials, endpoint);
    return new InferenceResult(
        input.getPipeline(),
        checkedOutput(outputs, InferenceResult.INFERENCES, expected, endpoint),
        checkedOutput(outputs, InferenceResult.FAILURES, FAILURE_SCHEMA, endpoint));
  }

  /**
   * The packed-blocks path ({@link #withBlockSize}): Rows to blocks in Java ({@link PackBlocks}),
   * blocks to result blocks in Python ({@value InferenceConfig#RUN_INFERENCE_BLOCKS_URN}), result
   * blocks to Rows in Java ({@link UnpackBlocks}); the packer's failures and Python's are one
   * PCollection.
   */
  private InferenceResult expandBlocks(
      PCollection<Row> input, Schema expected, ServiceCredentials credentials, String endpoint) {
    Schema schema = input.getSchema();
    PackBlocks pack =
        new PackBlocks(
            schema, config.get(KEY_FIELD), config.get(FEATURE_FIELDS), config.get(PASSTHROUGH_FIELDS),
            config.get(BLOCK_SIZE), BLOCKS_TAG, PACK_FAILURES_TAG);
    PCollectionTuple packed =
        input.apply("PackBlocks", ParDo.of(pack).withOutputTags(BLOCKS_TAG, TupleTagList.of(PACK_FAILURES_TAG)));
    return inferBlocks(
        packed.get(BLOCKS_TAG).setRowSchema(pack.blockSchema()), packed.get(PACK_FAILURES_TAG), schema, expected,
        credentials, endpoint);
  }

  /** {@link BlockInference}'s expansion: {@link FeatureBlock}s to block Rows in Java, then as {@link #inferBlocks}. */
  InferenceResult expandFeatureBlocks(PCollection<FeatureBlock> input, FeatureBlock.KeyType keyType) {
    checkModelUpdates(input.getPipeline());
    Schema rows = FeatureBlockRows.rowSchema(keyType);
    Schema blockSchema = Blocks.inputSchema(rows, Blocks.KEY, Collections.emptyList());
    PCollectionTuple packed =
        input.apply(
            "FeatureBlocks",
            ParDo.of(new FeatureBlockRows(blockSchema, keyType, BLOCKS_TAG, PACK_FAILURES_TAG))
                .withOutputTags(BLOCKS_TAG, TupleTagList.of(PACK_FAILURES_TAG)));
    return inferBlocks(
        packed.get(BLOCKS_TAG).setRowSchema(blockSchema), packed.get(PACK_FAILURES_TAG), rows,
        Blocks.unpackedSchema(rows, Blocks.KEY, inferenceKind(), Collections.emptyList()), credentials(), endpoint());
  }

  /**
   * Block Rows (of {@link Blocks#inputSchema} for Rows of {@code schema}) to result blocks in
   * Python, result blocks to the {@code expected} inference Rows in Java; the failures of the
   * packing ({@code packFailures}) and Python's are one PCollection.
   */
  private InferenceResult inferBlocks(
      PCollection<Row> blocks, PCollection<Row> packFailures, Schema schema, Schema expected,
      ServiceCredentials credentials, String endpoint) {
    InferenceKind kind = inferenceKind();
    String keyField = config.get(KEY_FIELD);
    List<String> passthroughFields = config.get(PASSTHROUGH_FIELDS);
    PCollectionTuple outputs =
        applyExternal(
            "RunInferenceBlocks", InferenceConfig.RUN_INFERENCE_BLOCKS_URN, externalInput(blocks), credentials, endpoint);
    PCollection<Row> results =
        checkedOutput(
            outputs, InferenceResult.INFERENCES, Blocks.resultSchema(schema, keyField, kind, passthroughFields), endpoint);
    PCollection<Row> pythonFailures = checkedOutput(outputs, InferenceResult.FAILURES, FAILURE_SCHEMA, endpoint);
    PCollection<Row> inferences =
        results
            .apply(
                "UnpackBlocks",
                ParDo.of(
                    new UnpackBlocks(
                        results.getSchema(),
                        expected,
                        kind,
                        schema.getField(keyField).getType().getTypeName(),
                        passthroughFields,
                        endpoint)))
            .setRowSchema(expected);
    // One coder for both inputs of the Flatten (the service's, whose schema is equivalent), so
    // that no runner has to reconcile two encodings of the failure Rows.
    if (pythonFailures.getSchema().getFieldNames().equals(FAILURE_SCHEMA.getFieldNames())) {
      packFailures.setCoder(pythonFailures.getCoder());
    } else {
      packFailures.setRowSchema(FAILURE_SCHEMA);
      pythonFailures =
          pythonFailures
              .apply("ReorderFailures", ParDo.of(new ReorderFields(FAILURE_SCHEMA)))
              .setRowSchema(FAILURE_SCHEMA);
    }
    PCollection<Row> failures =
        PCollectionList.of(packFailures).and(pythonFailures).apply("Failures", Flatten.pCollections());
    failures.setCoder(pythonFailures.getCoder());
    return new InferenceResult(blocks.getPipeline(), inferences, failures);
  }

  private void checkModelUpdates(Pipeline pipeline) {
    PCollection<Row> modelUpdates = config.get(MODEL_UPDATES);
    if (modelUpdates != null && modelUpdates.getPipeline() != pipeline) {
      throw new IllegalArgumentException(
          "Inference: withModelUpdates() was given a PCollection of another pipeline than the input");
    }
  }

  private ServiceCredentials credentials() {
    return ExpansionService.credentials(
        "Inference", config.get(EXPANSION_SERVICE), config.get(LOCAL_PYTHON), config.get(SERVICE_CREDENTIALS));
  }

  private String endpoint() {
    return ExpansionService.resolve("Inference", config.get(EXPANSION_SERVICE), config.get(LOCAL_PYTHON));
  }

  /** Rows with the fields of {@code schema} in its order, taken by name. */
  private static final class ReorderFields extends DoFn<Row, Row> {
    private static final long serialVersionUID = 1L;
    private final Schema schema;

    ReorderFields(Schema schema) {
      this.schema = schema;
    }

    @ProcessElement
    public void processElement(@Element Row row, OutputReceiver<Row> out) {
      Object[] values = new Object[schema.getFieldCount()];
      for (int i = 0; i < values.length; i++) {
        values[i] = row.getValue(schema.getField(i).getName());
      }
      out.output(Row.withSchema(schema).attachValues(values));
    }
  }

  /** Applies the Python composite {@code urn} to {@code externalInput} through the expansion service. */
  private PCollectionTuple applyExternal(
      String name, String urn, PInput externalInput, ServiceCredentials credentials, String endpoint) {
    byte[] payload = InferenceConfig.payload(InferenceConfig.toRow(this));
    ExpansionServiceClientFactory given = config.get(EXPANSION_CLIENT);
    SecureExpansionServiceClientFactory secure =
        given == null && !credentials.isNone()
            ? new SecureExpansionServiceClientFactory("Inference", credentials)
            : null;
    ExpansionServiceClientFactory client = given != null ? given : secure;
    External.SingleOutputExpandableTransform<PInput, Row> external =
        client == null
            ? External.<PInput, Row>of(urn, payload, endpoint)
            : External.<PInput, Row>of(urn, payload, endpoint, client);
    try {
      return Pipeline.applyTransform(name, externalInput, external.withMultiOutputs());
    } catch (RuntimeException e) {
      throw ExpansionErrors.explain("Inference", endpoint, credentials, e);
    } finally {
      if (secure != null) {
        secure.close();
      }
    }
  }

  /**
   * The input of the composite: the Rows alone, or, with model updates, the Rows and the updates
   * tagged {@code rows} and {@code model_updates} (External turns these tags into the input
   * names of the expansion request, which the Python composite reads).
   */
  PInput externalInput(PCollection<Row> rows) {
    PCollection<Row> modelUpdates = config.get(MODEL_UPDATES);
    if (modelUpdates == null) {
      return rows;
    }
    return PCollectionTuple.of(ROWS_TAG, rows).and(MODEL_UPDATES_TAG, modelUpdates);
  }

  /** The kind of the inference after the models and the postprocessing. */
  InferenceKind inferenceKind() {
    return StepCatalog.kindAfter(config.get(MODELS).get(0).getOutput(), config.get(POSTPROCESS));
  }

  /** The output {@code tag} of the expanded composite, if it has the {@code expected} schema. */
  private PCollection<Row> checkedOutput(
      PCollectionTuple outputs, TupleTag<Row> tag, Schema expected, String endpoint) {
    String mismatch = "; the service and this library are different InferBridge versions";
    if (!outputs.has(tag)) {
      List<String> tags = new ArrayList<>();
      for (TupleTag<?> returned : outputs.getAll().keySet()) {
        tags.add(returned.getId());
      }
      throw new IllegalStateException(
          "Inference: the expansion service at " + endpoint + " returned the outputs " + tags
              + ", expected " + InferenceResult.INFERENCES.getId() + " and "
              + InferenceResult.FAILURES.getId() + mismatch);
    }
    PCollection<Row> output = outputs.get(tag);
    if (!output.hasSchema() || !output.getSchema().equivalent(expected)) {
      for (Step step : config.get(POSTPROCESS)) {
        if (step.getProducing() != null) {
          mismatch += ", or a step's producing() differs from what its Python definition produces";
          break;
        }
      }
      throw new IllegalStateException(
          "Inference: the expansion service at " + endpoint + " returned " + tag.getId()
              + " Rows of schema " + (output.hasSchema() ? output.getSchema() : "none")
              + ", expected " + expected + mismatch);
    }
    return output;
  }

  /** The settings the packed-blocks path ({@code method}: withBlockSize or overBlocks) cannot serve. */
  private void checkBlocks(String method) {
    InferenceKind kind = inferenceKind();
    List<Step> postprocess = config.get(POSTPROCESS);
    if (!Blocks.supports(kind)) {
      String from =
          postprocess.isEmpty()
              ? "the model output " + config.get(MODELS).get(0).getOutput()
              : "the postprocessing step '" + postprocess.get(postprocess.size() - 1).getName() + "'";
      throw new IllegalArgumentException(
          "Inference: " + method + " cannot carry an inference of kind " + kind.wireName()
              + " (" + Blocks.describe(kind.fieldType()) + ", from " + from + "); blocks carry vector, number, integer and "
              + "label inferences; "
              + (config.get(BLOCK_SIZE) != null
                  ? "remove withBlockSize() to use the row path, which carries every kind"
                  : "end the postprocessing with a step that gives one of these"));
    }
    for (String field : config.get(PASSTHROUGH_FIELDS)) {
      if (Blocks.FIELDS.contains(field)) {
        throw new IllegalArgumentException(
            "Inference: withPassthroughFields(\"" + field + "\") clashes with a field of the blocks of "
                + method + ": " + String.join(", ", Blocks.FIELDS)
                + "; rename the input field, or remove withBlockSize() to use the row path");
      }
    }
  }

  private void checkRequired() {
    if (config.get(KEY_FIELD) == null) {
      throw new IllegalStateException("Inference: withKeyField() is required");
    }
    if (config.get(FEATURE_FIELDS) == null) {
      throw new IllegalStateException("Inference: withFeatureField() or withFeatureFields() is required");
    }
  }

  private void checkInput(Schema schema) {
    String keyField = config.get(KEY_FIELD);
    checkField(schema, "withKeyField", keyField);
    TypeName keyType = schema.getField(keyField).getType().getTypeName();
    if (!KEY_TYPES.contains(keyType)) {
      throw new IllegalArgumentException(
          "Inference: withKeyField(\"" + keyField + "\") has type " + keyType
              + "; allowed: a string or integer field");
    }
    String featureMethod = config.get(FEATURE_METHOD);
    for (String field : config.get(FEATURE_FIELDS)) {
      checkField(schema, featureMethod, field);
      FieldType type = schema.getField(field).getType();
      if (!isNumbers(type)) {
        boolean array = type.getTypeName().isCollectionType();
        throw new IllegalArgumentException(
            "Inference: " + featureMethod + "(\"" + field + "\") "
                + (array ? "is an array of " + type.getCollectionElementType().getTypeName() : "has type " + type.getTypeName())
                + "; allowed: an array of numbers, or a numeric field");
      }
    }
    for (String field : config.get(PASSTHROUGH_FIELDS)) {
      checkField(schema, "withPassthroughFields", field);
    }
  }

  /** A number, or an array (of arrays ...) of numbers. */
  private static boolean isNumbers(FieldType type) {
    if (type.getTypeName().isNumericType()) {
      return true;
    }
    return type.getTypeName().isCollectionType() && isNumbers(type.getCollectionElementType());
  }

  private static void checkField(Schema schema, String method, String field) {
    if (!schema.hasField(field)) {
      throw new IllegalArgumentException(
          "Inference: " + method + "(\"" + field + "\") is not a field of the input schema; available fields: "
              + String.join(", ", schema.getFieldNames()));
    }
  }

  private static String describeFields(Schema schema) {
    List<String> fields = new ArrayList<>();
    for (Schema.Field field : schema.getFields()) {
      fields.add(field.getName() + " " + field.getType().getTypeName());
    }
    return String.join(", ", fields);
  }

  private static String requireName(String method, String name) {
    if (name == null || name.trim().isEmpty()) {
      throw new IllegalArgumentException(method + ": must be a non-empty string, got " + Model.quote(name));
    }
    return name;
  }

  private static List<String> names(String method, String[] names) {
    if (names == null) {
      throw new IllegalArgumentException(method + ": field names must not be null");
    }
    Set<String> seen = new LinkedHashSet<>();
    for (String name : names) {
      requireName(method, name);
      if (!seen.add(name)) {
        throw new IllegalArgumentException(method + ": \"" + name + "\" is given twice; give each field once");
      }
    }
    return Collections.unmodifiableList(new ArrayList<>(Arrays.asList(names)));
  }

  private static Duration requirePositive(String method, Duration duration) {
    if (duration == null || duration.getMillis() <= 0) {
      throw new IllegalArgumentException(method + ": the duration must be positive, got " + duration);
    }
    return duration;
  }

  /** Every setting, for the configuration Row ({@link InferenceConfig#toRow()}) and tests. */
  InferenceConfig config() {
    return config;
  }

  Integer blockSize() {
    return config.get(BLOCK_SIZE);
  }
}

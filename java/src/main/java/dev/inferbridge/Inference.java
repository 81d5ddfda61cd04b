package dev.inferbridge;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.EnumSet;
import java.util.List;
import java.util.Set;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.schemas.Schema.TypeName;
import org.apache.beam.sdk.transforms.PTransform;
import org.apache.beam.sdk.util.construction.External;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.PCollectionTuple;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TupleTag;

/**
 * Runs a model on schema'd Rows through InferBridge's Python inference composite.
 *
 * <p>Each input Row gives a key ({@link #withKeyField}) and an array of numbers
 * ({@link #withFeatureField}). The features go through the preprocessing steps in order, then
 * Beam's Python RunInference with the model, then the postprocessing steps in order. Every input
 * Row gives exactly one output Row in the {@link InferenceResult}: an inference, or a failure.
 *
 * <p>{@link InferenceResult#getInferences()} has the schema {@link #outputSchema(Schema)}:
 *
 * <ul>
 *   <li>{@code key}: the input key (STRING, or INT64 for integer keys);
 *   <li>{@code example}: the model input after preprocessing (ARRAY&lt;DOUBLE&gt;);
 *   <li>{@code inference}: the result, typed by the last step (e.g. INT64 after {@link
 *       Step#argmax()}, STRING after {@link Step#labels});
 *   <li>{@code model_id}: the model that made the inference.
 * </ul>
 *
 * <p>{@link InferenceResult#getFailures()} has the schema {@link #FAILURE_SCHEMA}: the input Rows
 * that could not be read, preprocessed, inferred or postprocessed, with the stage and the error.
 *
 * <pre>{@code
 * InferenceResult result = rows.apply(
 *     Inference.of(SklearnModel.pickle("/models/digits.pkl").withOutput(ModelOutput.PREDICT_PROBA))
 *         .withKeyField("id")
 *         .withFeatureField("pixels")
 *         .withPreprocess(Step.scale(1.0 / 16))
 *         .withPostprocess(Step.argmax())
 *         .withExpansionService("localhost:8097"));
 * PCollection<Row> predictions = result.getInferences();
 * PCollection<Row> failures = result.getFailures();
 * }</pre>
 *
 * <p>The pipeline needs a portable runner and a running {@code inferbridge-expansion-service};
 * {@code inferbridge-local -- <command>} starts both services for local runs. Without {@link
 * #withExpansionService}, the address is read from {@value #EXPANSION_SERVICE_ENV}.
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

  private static final Set<TypeName> KEY_TYPES =
      EnumSet.of(TypeName.STRING, TypeName.INT64, TypeName.INT32, TypeName.INT16, TypeName.BYTE);

  private final Model model;
  private final String keyField;
  private final String featureField;
  private final List<Step> preprocess;
  private final List<Step> postprocess;
  private final String expansionService;

  private Inference(
      Model model,
      String keyField,
      String featureField,
      List<Step> preprocess,
      List<Step> postprocess,
      String expansionService) {
    this.model = model;
    this.keyField = keyField;
    this.featureField = featureField;
    this.preprocess = preprocess;
    this.postprocess = postprocess;
    this.expansionService = expansionService;
  }

  /** Inference with {@code model}; set at least the key and feature fields. */
  public static Inference of(Model model) {
    if (model == null) {
      throw new IllegalArgumentException(
          "Inference.of(): model must not be null; create one with e.g. SklearnModel.pickle(uri)");
    }
    return new Inference(
        model, null, null, Collections.emptyList(), Collections.emptyList(), null);
  }

  /** The input field whose value keys each inference. Required. */
  public Inference withKeyField(String keyField) {
    return new Inference(
        model, requireName("withKeyField", keyField), featureField, preprocess, postprocess, expansionService);
  }

  /** The input field holding the features: an array of numbers. Required. */
  public Inference withFeatureField(String featureField) {
    return new Inference(
        model, keyField, requireName("withFeatureField", featureField), preprocess, postprocess, expansionService);
  }

  /** Steps applied to the features before the model, in the order given. */
  public Inference withPreprocess(Step... steps) {
    return new Inference(model, keyField, featureField, steps("withPreprocess", steps), postprocess, expansionService);
  }

  /** Steps applied to the model's output, in the order given. */
  public Inference withPostprocess(Step... steps) {
    List<Step> checked = steps("withPostprocess", steps);
    InferenceKind.after(model.getOutput(), checked);
    return new Inference(model, keyField, featureField, preprocess, checked, expansionService);
  }

  /** The {@code host:port} of a running InferBridge expansion service. */
  public Inference withExpansionService(String hostPort) {
    if (hostPort == null || !hostPort.matches("[^\\s:]+:\\d{1,5}")) {
      throw new IllegalArgumentException(
          "withExpansionService(): expected host:port, e.g. localhost:8097, got " + hostPort);
    }
    return new Inference(model, keyField, featureField, preprocess, postprocess, hostPort);
  }

  /** The schema of the inference Rows for input Rows of {@code inputSchema}. */
  public Schema outputSchema(Schema inputSchema) {
    FieldType keyType =
        inputSchema.getField(keyField).getType().getTypeName() == TypeName.STRING
            ? FieldType.STRING
            : FieldType.INT64;
    return Schema.builder()
        .addField("key", keyType)
        .addArrayField("example", FieldType.DOUBLE)
        .addField("inference", InferenceKind.after(model.getOutput(), postprocess).fieldType())
        .addStringField("model_id")
        .build();
  }

  @Override
  public InferenceResult expand(PCollection<Row> input) {
    if (keyField == null) {
      throw new IllegalStateException("Inference: withKeyField() is required");
    }
    if (featureField == null) {
      throw new IllegalStateException("Inference: withFeatureField() is required");
    }
    if (!input.hasSchema()) {
      throw new IllegalArgumentException(
          "Inference: the input PCollection has no schema; give it one, e.g. with setRowSchema()");
    }
    Schema schema = input.getSchema();
    checkField(schema, "withKeyField", keyField, KEY_TYPES, "a string or integer field");
    checkFeatureField(schema);
    String endpoint = resolveExpansionService();

    Row config = InferenceConfig.toRow(model, keyField, featureField, preprocess, postprocess);
    PCollectionTuple outputs;
    try {
      outputs =
          input.apply(
              "RunInference",
              External.<PCollection<Row>, Row>of(
                      InferenceConfig.RUN_INFERENCE_URN, InferenceConfig.payload(config), endpoint)
                  .withMultiOutputs());
    } catch (RuntimeException e) {
      throw ExpansionErrors.explain(endpoint, e);
    }
    return new InferenceResult(
        input.getPipeline(),
        checkedOutput(outputs, InferenceResult.INFERENCES, outputSchema(schema), endpoint),
        checkedOutput(outputs, InferenceResult.FAILURES, FAILURE_SCHEMA, endpoint));
  }

  /** The output {@code tag} of the expanded composite, if it has the {@code expected} schema. */
  private static PCollection<Row> checkedOutput(
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
      throw new IllegalStateException(
          "Inference: the expansion service at " + endpoint + " returned " + tag.getId()
              + " Rows of schema " + (output.hasSchema() ? output.getSchema() : "none")
              + ", expected " + expected + mismatch);
    }
    return output;
  }

  private String resolveExpansionService() {
    if (expansionService != null) {
      return expansionService;
    }
    String fromEnv = System.getenv(EXPANSION_SERVICE_ENV);
    if (fromEnv == null || fromEnv.trim().isEmpty()) {
      throw new IllegalStateException(
          "Inference: withExpansionService() is required (or set " + EXPANSION_SERVICE_ENV
              + "); start a service with `inferbridge-expansion-service --port 8097`, or run the "
              + "pipeline under `inferbridge-local -- <command>`");
    }
    return withExpansionService(fromEnv.trim()).expansionService;
  }

  private void checkFeatureField(Schema schema) {
    checkField(schema, "withFeatureField", featureField, EnumSet.of(TypeName.ARRAY, TypeName.ITERABLE), "an array of numbers");
    FieldType element = schema.getField(featureField).getType().getCollectionElementType();
    if (!element.getTypeName().isNumericType()) {
      throw new IllegalArgumentException(
          "Inference: withFeatureField(\"" + featureField + "\") is an array of " + element.getTypeName()
              + "; allowed: an array of numbers");
    }
  }

  private static void checkField(
      Schema schema, String method, String field, Set<TypeName> allowed, String description) {
    if (!schema.hasField(field)) {
      throw new IllegalArgumentException(
          "Inference: " + method + "(\"" + field + "\") is not a field of the input schema; available fields: "
              + String.join(", ", schema.getFieldNames()));
    }
    TypeName type = schema.getField(field).getType().getTypeName();
    if (!allowed.contains(type)) {
      throw new IllegalArgumentException(
          "Inference: " + method + "(\"" + field + "\") has type " + type + "; allowed: " + description);
    }
  }

  private static String requireName(String method, String name) {
    if (name == null || name.trim().isEmpty()) {
      throw new IllegalArgumentException(method + "(): field name must be a non-empty string, got " + name);
    }
    return name;
  }

  private static List<Step> steps(String method, Step... steps) {
    if (steps == null || Arrays.asList(steps).contains(null)) {
      throw new IllegalArgumentException(method + "(): steps must not be null");
    }
    return Collections.unmodifiableList(Arrays.asList(steps.clone()));
  }
}

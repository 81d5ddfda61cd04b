package dev.inferbridge;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNotSame;
import static org.junit.Assert.assertSame;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.io.ByteArrayInputStream;
import java.net.ServerSocket;
import java.util.Arrays;
import java.util.Collections;
import java.util.Map;
import java.util.TreeSet;
import java.util.stream.Collectors;
import org.apache.beam.model.pipeline.v1.ExternalTransforms.ExternalConfigurationPayload;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.coders.RowCoder;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.schemas.SchemaTranslation;
import org.apache.beam.sdk.testing.CrashingRunner;
import org.apache.beam.sdk.transforms.Create;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.PCollectionTuple;
import org.apache.beam.sdk.values.PInput;
import org.apache.beam.sdk.values.PValue;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TupleTag;
import org.joda.time.Duration;
import org.junit.Test;
import org.junit.function.ThrowingRunnable;

/** Builder and construction-time checks; none of these needs Python or a service. */
public class InferenceTest {
  private static final Schema INPUT =
      Schema.builder()
          .addStringField("id")
          .addInt64Field("n")
          .addArrayField("pixels", FieldType.DOUBLE)
          .addArrayField("names", FieldType.STRING)
          .addNullableField("label", FieldType.INT64)
          .addInt32Field("small")
          .addDoubleField("weight")
          .addField("grid", FieldType.array(FieldType.array(FieldType.FLOAT)))
          .addBooleanField("flag")
          .build();

  private static final Schema UPDATES =
      Schema.builder().addStringField("model_id").addStringField("uri").build();

  private static final Inference BASE =
      Inference.of(SklearnModel.pickle("/m.pkl")).withKeyField("id").withFeatureField("pixels");

  private static final Inference PROBA =
      Inference.of(SklearnModel.pickle("/m.pkl").withOutput(ModelOutput.PREDICT_PROBA))
          .withKeyField("id")
          .withFeatureField("pixels");

  private static String message(Class<? extends Throwable> type, ThrowingRunnable r) {
    return assertThrows(type, r).getMessage();
  }

  private static String message(ThrowingRunnable r) {
    return message(IllegalArgumentException.class, r);
  }

  private static FieldType inferenceType(Inference inference) {
    return inference.outputSchema(INPUT).getField("inference").getType();
  }

  @Test
  public void withMethodsReturnNewInstancesAndLeaveTheOriginalUnchanged() {
    Inference rounded = BASE.withPostprocess(Step.round());
    assertNotSame(BASE, rounded);
    assertEquals(FieldType.INT64, inferenceType(rounded));
    assertEquals(FieldType.DOUBLE, inferenceType(BASE));
    Inference passing = BASE.withPassthroughFields("n");
    assertEquals(4, BASE.outputSchema(INPUT).getFieldCount());
    assertEquals(5, passing.outputSchema(INPUT).getFieldCount());
  }

  @Test
  public void outputSchemaFollowsTheModelOutputAndThePostprocessing() {
    assertEquals(FieldType.array(FieldType.DOUBLE), inferenceType(PROBA));
    assertEquals(FieldType.INT64, inferenceType(PROBA.withPostprocess(Step.argmax())));
    assertEquals(FieldType.STRING, inferenceType(PROBA.withPostprocess(Step.argmax(), Step.labels("a", "b"))));
    assertEquals(FieldType.map(FieldType.STRING, FieldType.DOUBLE), inferenceType(PROBA.withPostprocess(Step.topK(2))));
    assertEquals(
        FieldType.map(FieldType.STRING, FieldType.DOUBLE), inferenceType(PROBA.withPostprocess(Step.softmax(), Step.scores("a", "b"))));
    assertEquals(FieldType.INT64, inferenceType(BASE.withPostprocess(Step.round())));
    assertEquals(FieldType.INT64, inferenceType(BASE.withPostprocess(Step.threshold(0.5))));
    assertEquals(
        FieldType.STRING,
        inferenceType(BASE.withPostprocess(Step.round(), Step.labelMap(Collections.singletonMap("1", "one")))));
    assertEquals(
        FieldType.STRING,
        inferenceType(PROBA.withPostprocess(Step.named("best_label", Collections.<String, Object>emptyMap()).producing(InferenceKind.LABEL))));
    Inference torch = Inference.of(PytorchModel.torchScript("/m.pt")).withKeyField("id").withFeatureField("pixels");
    assertEquals(FieldType.array(FieldType.DOUBLE), inferenceType(torch));
    Inference regression =
        Inference.of(OnnxModel.of("/m.onnx").withOutput(ModelOutput.NUMBER)).withKeyField("id").withFeatureField("pixels");
    assertEquals(FieldType.DOUBLE, inferenceType(regression));

    Schema out = BASE.outputSchema(INPUT);
    assertEquals(Arrays.asList("key", "example", "inference", "model_id"), out.getFieldNames());
    assertEquals(FieldType.STRING, out.getField("key").getType());
    assertEquals(FieldType.array(FieldType.DOUBLE), out.getField("example").getType());
    assertEquals(FieldType.STRING, out.getField("model_id").getType());
    assertEquals(FieldType.INT64, BASE.withKeyField("n").outputSchema(INPUT).getField("key").getType());
    assertEquals(FieldType.INT64, BASE.withKeyField("small").outputSchema(INPUT).getField("key").getType());
  }

  @Test
  public void passthroughFieldsFollowWithTheirInputTypes() {
    Schema out = PROBA.withPostprocess(Step.topK(3)).withPassthroughFields("label", "id", "names").outputSchema(INPUT);
    assertEquals(Arrays.asList("key", "example", "inference", "model_id", "label", "id", "names"), out.getFieldNames());
    assertEquals(FieldType.INT64.withNullable(true), out.getField("label").getType());
    assertEquals(FieldType.STRING, out.getField("id").getType());
    assertEquals(FieldType.array(FieldType.STRING), out.getField("names").getType());
    assertEquals(FieldType.map(FieldType.STRING, FieldType.DOUBLE), out.getField("inference").getType());
  }

  @Test
  public void featuresMayBeSeveralNumericFieldsOrNestedArrays() {
    assertEquals(4, BASE.withFeatureFields("pixels", "weight", "small").outputSchema(INPUT).getFieldCount());
    assertEquals(4, BASE.withFeatureField("grid").outputSchema(INPUT).getFieldCount());
    assertEquals(
        "Inference: withFeatureFields(\"flag\") has type BOOLEAN; allowed: an array of numbers, or a numeric field",
        message(() -> BASE.withFeatureFields("pixels", "flag").outputSchema(INPUT)));
    assertEquals(
        "Inference: withFeatureFields(\"nope\") is not a field of the input schema; available fields: "
            + String.join(", ", INPUT.getFieldNames()),
        message(() -> BASE.withFeatureFields("nope").outputSchema(INPUT)));
  }

  @Test
  public void failureSchemaIsTheCompositesFailureRow() {
    Schema failures = Inference.FAILURE_SCHEMA;
    assertEquals(
        Arrays.asList("stage", "step", "error_type", "message", "element", "key", "model_id"),
        failures.getFieldNames());
    for (String required : Arrays.asList("stage", "error_type", "message", "element")) {
      assertEquals(FieldType.STRING, failures.getField(required).getType());
    }
    for (String nullable : Arrays.asList("step", "key", "model_id")) {
      assertEquals(FieldType.STRING.withNullable(true), failures.getField(nullable).getType());
    }
  }

  @Test
  public void resultExpandsToTheCompositesOutputTags() {
    PCollection<Row> rows = input(pipeline());
    InferenceResult result = new InferenceResult(rows.getPipeline(), rows, rows);
    assertSame(rows, result.getInferences());
    assertSame(rows, result.getFailures());
    assertEquals(
        Arrays.asList("inferences", "failures"),
        result.expand().keySet().stream().map(TupleTag::getId).collect(Collectors.toList()));
  }

  @Test
  public void severalModelsMustHaveDistinctIdsAndKeysAndOneDefaultAtMost() {
    assertEquals(
        "Inference.of(): models[1] has the model id \"/m.pkl\", already used by models[0]; give each model a "
            + "distinct id with withModelId()",
        message(() -> Inference.of(SklearnModel.pickle("/m.pkl").withKeys("a"), SklearnModel.joblib("/m.pkl"))));
    assertEquals(
        "Inference.of(): models[2] has the model id \"x\", already used by models[0]; give each model a distinct id "
            + "with withModelId()",
        message(() -> Inference.of(
            SklearnModel.pickle("/a").withModelId("x").withKeys("a"),
            SklearnModel.pickle("/b").withKeys("b"),
            SklearnModel.pickle("/c").withModelId("x"))));
    assertEquals(
        "Inference.of(): key \"b\" is served by models[0] and models[1]; each key may be served by one model only",
        message(() -> Inference.of(SklearnModel.pickle("/a").withKeys("a", "b"), SklearnModel.pickle("/b").withKeys("b"))));
    assertEquals(
        "Inference.of(): models [0, 2] have no keys, so each would be the default model; give all but one of them "
            + "keys with withKeys() (the one without keys serves every unmapped key)",
        message(() -> Inference.of(Arrays.asList(
            SklearnModel.pickle("/a"), SklearnModel.pickle("/b").withKeys("b"), SklearnModel.pickle("/c")))));
    assertEquals(
        "Inference.of(): all models must give the same kind of output so the output schema is fixed: models[0] gives "
            + "a number (PREDICT), models[1] gives a vector (VECTOR); choose outputs of one kind with withOutput()",
        message(() -> Inference.of(SklearnModel.pickle("/a").withKeys("a"), OnnxModel.of("/b"))));
    assertEquals("Inference.of(): give at least one model, e.g. SklearnModel.pickle(uri)", message(() -> Inference.of()));
    assertEquals(
        "Inference.of(): models[1] is null; create models with e.g. SklearnModel.pickle(uri)",
        message(() -> Inference.of(SklearnModel.pickle("/a"), null)));
    assertEquals(
        "Inference.of(): give at least one model, e.g. SklearnModel.pickle(uri)",
        message(() -> Inference.of((java.util.List<Model>) null)));
    // Models of one kind across frameworks are fine; the inference type is theirs.
    Inference mixed = Inference.of(
            SklearnModel.pickle("/a").withOutput(ModelOutput.PREDICT_PROBA).withKeys("a"),
            PytorchModel.torchScript("/b").withKeys("b"),
            OnnxModel.of("/c"))
        .withKeyField("id")
        .withFeatureField("pixels")
        .withPostprocess(Step.argmax());
    assertEquals(FieldType.INT64, inferenceType(mixed));
    assertEquals(3, mixed.config().get(InferenceConfig.MODELS).size());
  }

  @Test
  public void postprocessingThatDoesNotFitTheModelOutputIsRejected() {
    assertEquals(
        "withPostprocess(): step 'argmax' takes a vector but receives a number here (from the model output PREDICT); "
            + "reorder the steps or change the model's withOutput()",
        message(() -> BASE.withPostprocess(Step.argmax())));
    assertEquals(
        "withPostprocess(): step 'labels' takes an integer but receives a vector here (from step 'softmax'); "
            + "reorder the steps or change the model's withOutput()",
        message(() -> PROBA.withPostprocess(Step.softmax(), Step.labels("a"))));
    assertTrue(message(() -> PROBA.withPostprocess(Step.named("embed", Collections.<String, Object>emptyMap())))
        .startsWith("withPostprocess(): the last step 'embed' is not a built-in step and declares no output kind"));
  }

  @Test
  public void stepsMustBelongToTheirStage() {
    assertEquals(
        "withPreprocess(): step 'argmax' is a postprocess step; preprocess steps: scale, normalize, reshape, cast, pad, "
            + "truncate and steps registered by Python packages",
        message(() -> BASE.withPreprocess(Step.scale(2), Step.argmax())));
    assertEquals(
        "withPostprocess(): step 'scale' is a preprocess step; postprocess steps: argmax, softmax, top_k, threshold, "
            + "round, labels, label_map, scores and steps registered by Python packages",
        message(() -> PROBA.withPostprocess(Step.scale(2))));
    assertEquals(
        "withPreprocess(): step 'clip' declares producing(VECTOR), but preprocessing steps turn examples into model "
            + "input and produce no inference; remove producing() or move the step to withPostprocess()",
        message(() -> BASE.withPreprocess(Step.named("clip", Collections.<String, Object>emptyMap()).producing(InferenceKind.VECTOR))));
    assertEquals("withPreprocess(): steps[1] is null", message(() -> BASE.withPreprocess(Step.scale(2), null)));
    assertEquals("withPostprocess(): steps must not be null", message(() -> BASE.withPostprocess((Step[]) null)));
    assertEquals(1, BASE.withPreprocess(Step.named("clip", Collections.singletonMap("low", 0))).config().get(InferenceConfig.PREPROCESS).size());
  }

  @Test
  public void invalidSettingsNameTheMethodAndValue() {
    assertEquals(
        "withExpansionService(): expected host:port, e.g. localhost:8097, got localhost",
        message(() -> BASE.withExpansionService("localhost")));
    assertEquals("withKeyField(): must be a non-empty string, got \" \"", message(() -> BASE.withKeyField(" ")));
    assertEquals("withFeatureField(): must be a non-empty string, got null", message(() -> BASE.withFeatureField(null)));
    assertEquals("withFeatureFields(): name at least one input field", message(() -> BASE.withFeatureFields()));
    assertEquals(
        "withPassthroughFields(): \"model_id\" clashes with an output field; output fields are key, example, inference, model_id",
        message(() -> BASE.withPassthroughFields("id", "model_id")));
    assertEquals(
        "withPassthroughFields(): \"id\" is given twice; give each field once",
        message(() -> BASE.withPassthroughFields("id", "id")));
    assertEquals("withBatchSize(0, 10): sizes must be positive integers", message(() -> BASE.withBatchSize(0, 10)));
    assertEquals(
        "withBatchSize(20, 10): minSize is larger than maxSize; make minSize <= maxSize",
        message(() -> BASE.withBatchSize(20, 10)));
    assertEquals(
        "withMaxBatchDuration(): the duration must be positive, got PT0S",
        message(() -> BASE.withMaxBatchDuration(Duration.ZERO)));
    assertEquals(
        "withWatchInterval(): the duration must be positive, got null", message(() -> BASE.withWatchInterval(null)));
    assertEquals(
        "withVariableLength(): mode must not be null; allowed: BUCKET, PAD", message(() -> BASE.withVariableLength(null)));
    assertEquals(
        "withVariableLength(BUCKET, 1.0): a pad value is only for PAD; use withVariableLength(BUCKET)",
        message(() -> BASE.withVariableLength(VariableLength.BUCKET, 1)));
    assertEquals(
        "withVariableLength(PAD, NaN): padValue must be a finite number",
        message(() -> BASE.withVariableLength(VariableLength.PAD, Double.NaN)));
    assertEquals(
        "withMaxModelsPerWorker(0): count must be a positive integer", message(() -> BASE.withMaxModelsPerWorker(0)));
    assertEquals(
        "withMinRam(\"lots\"): not a memory size; use a number and a unit (B, KB, MB, GB, TB, PB, KiB, MiB, GiB, "
            + "TiB, PiB) in at most 32 characters, e.g. \"4GB\" or \"512MiB\"",
        message(() -> BASE.withMinRam("lots")));
    // What the service would refuse at expansion is refused here.
    for (String size : Arrays.asList("-4GB", "0", "4 gb", "4GBs", "", String.join("", Collections.nCopies(40, "9")) + "GB")) {
      assertTrue(size, message(() -> BASE.withMinRam(size)).contains("): not a memory size; use a number and a unit"));
    }
    assertTrue(message(() -> BASE.withMinRam(null)).startsWith("withMinRam(null): not a memory size; "));
    assertEquals(
        "withBatchSize(1, 1000001): sizes must be at most 1000000", message(() -> BASE.withBatchSize(1, 1_000_001)));
    assertEquals(Long.valueOf(1_000_000L), BASE.withBatchSize(1, 1_000_000).config().get(InferenceConfig.MAX_BATCH_SIZE));
    assertEquals(
        "withMaxBatchDuration(PT3600.001S): the duration must be at most an hour (PT3600S)",
        message(() -> BASE.withMaxBatchDuration(org.joda.time.Duration.millis(3_600_001))));
    assertEquals(
        org.joda.time.Duration.standardHours(1),
        BASE.withMaxBatchDuration(org.joda.time.Duration.standardHours(1)).config().get(InferenceConfig.MAX_BATCH_DURATION));
    assertEquals(
        "withFeatureFields(): \"pixels\" is given twice; give each field once",
        message(() -> BASE.withFeatureFields("pixels", "pixels")));
    assertEquals("withAccelerator(): must be a non-empty string, got \"\"", message(() -> BASE.withAccelerator("")));
    // What the service would refuse at expansion is refused here, as the service words it.
    for (String hint : Arrays.asList("gpu", "count:1", "type:;count:1", "type:nvidia-tesla-t4;count:0",
        "type:nvidia-tesla-t4;count:two", "type:t4\n", "type:" + String.join("", Collections.nCopies(300, "x")),
        "type:t4;count:99999999999999999999", "type:t4;count:2147483648", "type:t4;type:a100",
        "type:t4;count:0;count:1")) {
      assertTrue(
          hint, message(() -> BASE.withAccelerator(hint)).contains("): not an accelerator hint; allowed: \"type:TYPE\" then"));
    }
    assertEquals(
        "withAccelerator(\"gpu\"): not an accelerator hint; allowed: \"type:TYPE\" then \";\"-separated options, "
            + "each once: \"count:N\" (1 <= N <= 2147483647) and flags, in at most 256 printable ASCII characters, "
            + "e.g. \"type:nvidia-tesla-t4;count:1;install-nvidia-driver\"",
        message(() -> BASE.withAccelerator("gpu")));
    for (String hint : Arrays.asList("type:nvidia-tesla-t4", "type:nvidia-tesla-t4;count:2;install-nvidia-driver",
        "count:1;type:nvidia-l4", "type:nvidia-l4;count:2147483647;install-nvidia-driver:5xx")) {
      assertEquals(hint, BASE.withAccelerator(hint).config().get(InferenceConfig.ACCELERATOR));
    }
    assertEquals(
        "withMetricsNamespace(): must be a non-empty string, got null", message(() -> BASE.withMetricsNamespace(null)));
    for (String size : Arrays.asList("4GB", "512MiB", "1.5 GiB", "1000B")) {
      assertEquals(size, BASE.withMinRam(size).config().get(InferenceConfig.MIN_RAM));
    }
  }

  @Test
  public void missingOrMistypedFieldsFailAtConstruction() {
    Pipeline p = pipeline();
    assertEquals(
        "Inference: withFeatureField(\"pixel\") is not a field of the input schema; available fields: "
            + String.join(", ", INPUT.getFieldNames()),
        message(() -> input(p).apply(BASE.withFeatureField("pixel"))));
    assertEquals(
        "Inference: withFeatureField(\"names\") is an array of STRING; allowed: an array of numbers, or a numeric field",
        message(() -> input(p).apply(BASE.withFeatureField("names"))));
    assertEquals(
        "Inference: withKeyField(\"pixels\") has type ARRAY; allowed: a string or integer field",
        message(() -> input(p).apply(BASE.withKeyField("pixels"))));
    assertEquals(
        "Inference: withPassthroughFields(\"nope\") is not a field of the input schema; available fields: "
            + String.join(", ", INPUT.getFieldNames()),
        message(() -> input(p).apply(BASE.withPassthroughFields("id", "nope"))));
    assertEquals(
        "Inference: withKeyField() is required",
        message(IllegalStateException.class,
            () -> input(p).apply(Inference.of(SklearnModel.pickle("/m.pkl")).withFeatureField("pixels"))));
    assertEquals(
        "Inference: withFeatureField() or withFeatureFields() is required",
        message(IllegalStateException.class, () -> Inference.of(SklearnModel.pickle("/m.pkl")).withKeyField("id").outputSchema(INPUT)));
  }

  @Test
  public void modelUpdatesMustBeRowsOfModelIdAndUri() {
    Pipeline p = pipeline();
    Schema wrong = Schema.builder().addStringField("model_id").addInt64Field("uri").build();
    PCollection<Row> bad =
        p.apply("Bad", Create.of(Row.withSchema(wrong).addValues("m", 1L).build()).withRowSchema(wrong));
    assertEquals(
        "withModelUpdates(): the updates must be Rows with the STRING fields model_id and uri; got Rows with the "
            + "fields model_id STRING, uri INT64",
        message(() -> BASE.withModelUpdates(bad)));
    PCollection<String> strings = p.apply("Strings", Create.of("x"));
    @SuppressWarnings("unchecked")
    PCollection<Row> noSchema = (PCollection<Row>) (PCollection<?>) strings;
    assertEquals(
        "withModelUpdates(): the updates must be Rows with the STRING fields model_id and uri; got a PCollection "
            + "without a schema",
        message(() -> BASE.withModelUpdates(noSchema)));
    assertEquals("withModelUpdates(): updates must not be null", message(() -> BASE.withModelUpdates(null)));
    PCollection<Row> other = updates(pipeline());
    assertEquals(
        "Inference: withModelUpdates() was given a PCollection of another pipeline than the input",
        message(() -> input(p).apply(BASE.withModelUpdates(other).withExpansionService("localhost:1"))));
  }

  @Test
  public void modelUpdatesAreASecondInputTaggedAsPythonExpects() {
    Pipeline p = pipeline();
    PCollection<Row> rows = input(p);
    PCollection<Row> updates = updates(p);
    assertSame(rows, BASE.externalInput(rows));
    PInput both = BASE.withModelUpdates(updates).externalInput(rows);
    Map<TupleTag<?>, PValue> tagged = ((PCollectionTuple) both).expand();
    assertEquals(
        Arrays.asList("rows", "model_updates"),
        tagged.keySet().stream().map(TupleTag::getId).collect(Collectors.toList()));
    assertSame(rows, tagged.get(Inference.ROWS_TAG));
    assertSame(updates, tagged.get(Inference.MODEL_UPDATES_TAG));
  }

  @Test
  public void aRejectionSaysWhatIsWrongInOneLineAndKeepsTheTracebackApart() {
    String traceback = "Traceback (most recent call last):\n"
        + "  File \"/venv/lib/python3.11/site-packages/apache_beam/runners/portability/expansion_service.py\", line 99, in Expand\n"
        + "    raise ValueError(\n"
        + "    ^^^^^^^^^^^^^^^^^\n"
        + "ValueError: models[0].sha256 does not match '/m/a.pkl': expected 00, actual ab; the file changed, or the pin is wrong\n";
    String chained = "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\nKeyError: 'a'\n\n"
        + "The above exception was the direct cause of the following exception:\n\n" + traceback;
    for (String response : Arrays.asList(traceback, chained)) {
      Pipeline p = pipeline();
      ExpansionRejectedException e = assertThrows(ExpansionRejectedException.class,
          () -> input(p).apply(BASE.withExpansionService("localhost:1").withExpansionClient(FakeExpansionService.failing(response))));
      assertEquals(
          "Inference: the expansion service at localhost:1 rejected the configuration: ValueError: models[0].sha256 does "
              + "not match '/m/a.pkl': expected 00, actual ab; the file changed, or the pin is wrong",
          e.getMessage());
      assertEquals(response.trim(), e.getServiceTraceback());
      assertTrue(String.valueOf(e.getCause().getMessage()).contains("expansion_service.py"));
    }
    assertEquals("ValueError: one\ntwo", ExpansionRejectedException.exceptionOf("Traceback (most recent call last):\n  File \"f\"\nValueError: one\ntwo\n"));
    assertEquals("refused: no URN", ExpansionRejectedException.exceptionOf("refused: no URN\n"));
  }

  @Test
  public void theExpansionRequestNamesTheInputsRowsAndModelUpdates() throws Exception {
    Pipeline p = pipeline();
    FakeExpansionService service = FakeExpansionService.failing("ValueError: no thanks");
    Inference inference =
        PROBA.withPostprocess(Step.argmax()).withModelUpdates(updates(p)).withExpansionService("localhost:1")
            .withExpansionClient(service);
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> input(p).apply(inference));
    assertTrue(e.getMessage(), e.getMessage().startsWith(
        "Inference: the expansion service at localhost:1 rejected the configuration: ValueError: no thanks"));
    assertEquals(
        new TreeSet<>(Arrays.asList("rows", "model_updates")),
        new TreeSet<>(service.request.getTransform().getInputsMap().keySet()));
    assertEquals(InferenceConfig.RUN_INFERENCE_URN, service.request.getTransform().getSpec().getUrn());
    ExternalConfigurationPayload payload =
        ExternalConfigurationPayload.parseFrom(service.request.getTransform().getSpec().getPayload());
    Row config = RowCoder.of(SchemaTranslation.schemaFromProto(payload.getSchema()))
        .decode(new ByteArrayInputStream(payload.getPayload().toByteArray()));
    assertEquals(InferenceConfig.toRow(inference), config);

    Pipeline q = pipeline();
    FakeExpansionService single = FakeExpansionService.failing("no");
    assertThrows(IllegalArgumentException.class,
        () -> input(q).apply(BASE.withExpansionService("localhost:1").withExpansionClient(single)));
    assertEquals(1, single.request.getTransform().getInputsCount());
  }

  @Test
  public void outputsOfTheExpectedSchemasBecomeTheResult() {
    Pipeline p = pipeline();
    Inference inference =
        PROBA.withPostprocess(Step.topK(2)).withPassthroughFields("label").withExpansionService("localhost:1");
    Schema expected = inference.outputSchema(INPUT);
    InferenceResult result =
        input(p).apply(inference.withExpansionClient(FakeExpansionService.returning(expected, Inference.FAILURE_SCHEMA)));
    assertTrue(result.getInferences().getSchema().equivalent(expected));
    assertTrue(result.getFailures().getSchema().equivalent(Inference.FAILURE_SCHEMA));
  }

  @Test
  public void outputsOfAnotherSchemaAreReported() {
    Pipeline p = pipeline();
    Inference inference = PROBA.withPostprocess(Step.named("best", Collections.<String, Object>emptyMap()).producing(InferenceKind.LABEL))
        .withExpansionService("localhost:1");
    Schema returned = PROBA.outputSchema(INPUT); // the inference is still a vector
    String error = message(IllegalStateException.class,
        () -> input(p).apply(inference.withExpansionClient(FakeExpansionService.returning(returned, Inference.FAILURE_SCHEMA))));
    assertTrue(error, error.startsWith("Inference: the expansion service at localhost:1 returned inferences Rows of schema "));
    assertTrue(error, error.endsWith("; the service and this library are different InferBridge versions, or a step's "
        + "producing() differs from what its Python definition produces"));
  }

  @Test
  public void unreachableServiceFailsAtConstructionWithHowToStartIt() throws Exception {
    int port;
    try (ServerSocket socket = new ServerSocket(0)) {
      port = socket.getLocalPort(); // closed again: nothing listens there
    }
    String address = "localhost:" + port;
    IllegalStateException e =
        assertThrows(IllegalStateException.class, () -> input(pipeline()).apply(BASE.withExpansionService(address)));
    assertTrue(e.getMessage(), e.getMessage().startsWith(
        "Inference: the InferBridge expansion service at " + address + " is not reachable (UNAVAILABLE"));
    assertTrue(e.getMessage(), e.getMessage().contains("inferbridge-expansion-service --port " + port));
  }

  private static Pipeline pipeline() {
    // Construction only: these pipelines are never run.
    PipelineOptions options = PipelineOptionsFactory.create();
    options.setRunner(CrashingRunner.class);
    return Pipeline.create(options);
  }

  private static PCollection<Row> input(Pipeline pipeline) {
    Row row =
        Row.withSchema(INPUT)
            .addValues("a", 1L, Arrays.asList(1.0, 2.0), Arrays.asList("x"), null, 3, 0.5,
                Arrays.asList(Arrays.asList(1f)), true)
            .build();
    return pipeline.apply(Create.of(row).withRowSchema(INPUT));
  }

  private static PCollection<Row> updates(Pipeline pipeline) {
    return pipeline.apply(
        "Updates", Create.of(Row.withSchema(UPDATES).addValues("m", "/m2.pkl").build()).withRowSchema(UPDATES));
  }
}

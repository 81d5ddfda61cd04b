package dev.inferbridge;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNotSame;
import static org.junit.Assert.assertSame;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.net.ServerSocket;
import java.util.Arrays;
import java.util.stream.Collectors;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.testing.CrashingRunner;
import org.apache.beam.sdk.transforms.Create;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TupleTag;
import org.junit.Test;

/** Builder and construction-time checks; none of these needs Python or a service. */
public class InferenceTest {
  private static final Schema INPUT =
      Schema.builder()
          .addStringField("id")
          .addInt64Field("n")
          .addArrayField("pixels", FieldType.DOUBLE)
          .addArrayField("names", FieldType.STRING)
          .build();

  private static final Inference BASE =
      Inference.of(SklearnModel.pickle("/m.pkl")).withKeyField("id").withFeatureField("pixels");

  @Test
  public void withMethodsReturnNewInstancesAndLeaveTheOriginalUnchanged() {
    Inference rounded = BASE.withPostprocess(Step.round());
    assertNotSame(BASE, rounded);
    assertEquals(FieldType.INT64, rounded.outputSchema(INPUT).getField("inference").getType());
    Schema unchanged = BASE.outputSchema(INPUT);
    assertEquals(FieldType.DOUBLE, unchanged.getField("inference").getType());
  }

  @Test
  public void outputSchemaFollowsTheModelOutputAndThePostprocessing() {
    Model proba = SklearnModel.pickle("/m.pkl").withOutput(ModelOutput.PREDICT_PROBA);
    Inference vector = Inference.of(proba).withKeyField("id").withFeatureField("pixels");
    assertEquals(FieldType.array(FieldType.DOUBLE), vector.outputSchema(INPUT).getField("inference").getType());
    assertEquals(FieldType.INT64, vector.withPostprocess(Step.argmax()).outputSchema(INPUT).getField("inference").getType());
    assertEquals(
        FieldType.STRING,
        vector.withPostprocess(Step.argmax(), Step.labels("a", "b")).outputSchema(INPUT).getField("inference").getType());
    assertEquals(FieldType.INT64, BASE.withPostprocess(Step.round()).outputSchema(INPUT).getField("inference").getType());

    Schema out = BASE.outputSchema(INPUT);
    assertEquals(Arrays.asList("key", "example", "inference", "model_id"), out.getFieldNames());
    assertEquals(FieldType.STRING, out.getField("key").getType());
    assertEquals(FieldType.INT64, BASE.withKeyField("n").outputSchema(INPUT).getField("key").getType());
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
    PCollection<Row> rows = input();
    InferenceResult result = new InferenceResult(rows.getPipeline(), rows, rows);
    assertSame(rows, result.getInferences());
    assertSame(rows, result.getFailures());
    assertEquals(
        Arrays.asList("inferences", "failures"),
        result.expand().keySet().stream().map(TupleTag::getId).collect(Collectors.toList()));
  }

  @Test
  public void postprocessingThatDoesNotFitTheModelOutputIsRejected() {
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> BASE.withPostprocess(Step.argmax()));
    assertEquals(
        "withPostprocess(): step 'argmax' takes a [VECTOR] value but receives a NUMBER here; "
            + "reorder the steps or change Model.withOutput()",
        e.getMessage());
  }

  @Test
  public void invalidSettingsNameTheMethodAndValue() {
    assertEquals(
        "withExpansionService(): expected host:port, e.g. localhost:8097, got localhost",
        assertThrows(IllegalArgumentException.class, () -> BASE.withExpansionService("localhost")).getMessage());
    assertEquals(
        "withKeyField(): field name must be a non-empty string, got  ",
        assertThrows(IllegalArgumentException.class, () -> BASE.withKeyField(" ")).getMessage());
    assertEquals(
        "SklearnModel.pickle(): uri must be a non-empty path or URI, got null",
        assertThrows(IllegalArgumentException.class, () -> SklearnModel.pickle(null)).getMessage());
  }

  @Test
  public void missingOrMistypedFieldsFailAtConstruction() {
    IllegalArgumentException absent =
        assertThrows(IllegalArgumentException.class, () -> input().apply(BASE.withFeatureField("pixel")));
    assertEquals(
        "Inference: withFeatureField(\"pixel\") is not a field of the input schema; available fields: id, n, pixels, names",
        absent.getMessage());
    IllegalArgumentException strings =
        assertThrows(IllegalArgumentException.class, () -> input().apply(BASE.withFeatureField("names")));
    assertEquals(
        "Inference: withFeatureField(\"names\") is an array of STRING; allowed: an array of numbers",
        strings.getMessage());
    IllegalArgumentException key =
        assertThrows(IllegalArgumentException.class, () -> input().apply(BASE.withKeyField("pixels")));
    assertEquals(
        "Inference: withKeyField(\"pixels\") has type ARRAY; allowed: a string or integer field", key.getMessage());
    assertEquals(
        "Inference: withKeyField() is required",
        assertThrows(
            IllegalStateException.class,
            () -> input().apply(Inference.of(SklearnModel.pickle("/m.pkl")).withFeatureField("pixels")))
            .getMessage());
  }

  @Test
  public void unreachableServiceFailsAtConstructionWithHowToStartIt() throws Exception {
    int port;
    try (ServerSocket socket = new ServerSocket(0)) {
      port = socket.getLocalPort(); // closed again: nothing listens there
    }
    String address = "localhost:" + port;
    IllegalStateException e =
        assertThrows(IllegalStateException.class, () -> input().apply(BASE.withExpansionService(address)));
    assertTrue(e.getMessage(), e.getMessage().startsWith(
        "Inference: the InferBridge expansion service at " + address + " is not reachable (UNAVAILABLE"));
    assertTrue(e.getMessage(), e.getMessage().contains("inferbridge-expansion-service --port " + port));
  }

  private static PCollection<Row> input() {
    // Construction only: these pipelines are never run.
    PipelineOptions options = PipelineOptionsFactory.create();
    options.setRunner(CrashingRunner.class);
    Pipeline pipeline = Pipeline.create(options);
    Row row = Row.withSchema(INPUT).addValues("a", 1L, Arrays.asList(1.0, 2.0), Arrays.asList("x")).build();
    return pipeline.apply(Create.of(row).withRowSchema(INPUT));
  }
}

package dev.inferbridge;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;

import java.io.ByteArrayInputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import org.apache.beam.model.pipeline.v1.ExternalTransforms.ExternalConfigurationPayload;
import org.apache.beam.sdk.coders.RowCoder;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.SchemaTranslation;
import org.apache.beam.sdk.util.SerializableUtils;
import org.apache.beam.sdk.values.Row;
import org.joda.time.Duration;
import org.junit.Test;

/** The configuration Row: its schema is the golden one, and every setting lands in its field. */
public class InferenceConfigTest {
  private static final String SHA = "ab".repeat(32);

  @Test
  public void schemaMatchesTheGoldenDescriptionSharedWithPython() throws Exception {
    String dir = System.getProperty("inferbridge.goldenDir");
    List<String> golden = new ArrayList<>();
    for (String line : Files.readAllLines(Paths.get(dir, "run_inference_v1.schema"), StandardCharsets.UTF_8)) {
      if (!line.trim().isEmpty() && !line.startsWith("#")) {
        golden.add(line);
      }
    }
    assertEquals(golden, InferenceConfig.describe(InferenceConfig.SCHEMA));
  }

  /** Several keyed models of every framework and every option of the composite. */
  static Inference everything() {
    return Inference.of(
            SklearnModel.joblib("/models/a.joblib").withModelId("a").withKeys("a", "canary").withSha256(SHA),
            PytorchModel.stateDict("/models/b.pt", "nets.digits:Net")
                .withParams(Collections.singletonMap("hidden", 32))
                .withDevice(Device.CUDA)
                .withModelId("b")
                .withKeys("b")
                .withOutput(ModelOutput.NUMBER),
            OnnxModel.of("/models/c.onnx").withOutputName("y").withOutput(ModelOutput.NUMBER).withKeys("c"),
            BeamHandlerModel.of("xgboost_numpy", "/models/d.json")
                .withArgument("model_class", "XGBRegressor")
                .withOutput(ModelOutput.NUMBER)
                .withModelId("d")
                .withWatchPattern("/models/d-*.json"))
        .withKeyField("variant")
        .withFeatureFields("pixels", "extra")
        .withPassthroughFields("id", "label")
        .withPreprocess(Step.scale(0.5), Step.pad(64, -1))
        .withPostprocess(Step.threshold(0.5), Step.labels("no", "yes"))
        .withBatchSize(4, 32)
        .withMaxBatchDuration(Duration.millis(1500))
        .withVariableLength(VariableLength.PAD, -1)
        .withMaxModelsPerWorker(2)
        .withWatchInterval(Duration.standardSeconds(30))
        .withMinRam("4GB")
        .withAccelerator("type:nvidia-tesla-t4;count:1")
        .withMetricsNamespace("Digits");
  }

  @Test
  public void payloadCarriesEveryModelAndSetting() throws Exception {
    Inference inference = everything();
    ExternalConfigurationPayload payload =
        ExternalConfigurationPayload.parseFrom(InferenceConfig.payload(InferenceConfig.toRow(inference)));
    Schema schema = SchemaTranslation.schemaFromProto(payload.getSchema());
    assertEquals(InferenceConfig.describe(InferenceConfig.SCHEMA), InferenceConfig.describe(schema));
    Row decoded = RowCoder.of(schema).decode(new ByteArrayInputStream(payload.getPayload().toByteArray()));

    assertEquals("variant", decoded.getString("key_field"));
    assertEquals(Arrays.asList("pixels", "extra"), new ArrayList<>(decoded.getArray("feature_fields")));
    assertEquals(Arrays.asList("id", "label"), new ArrayList<>(decoded.getArray("passthrough_fields")));
    List<Row> models = new ArrayList<>(decoded.getArray("models"));
    assertEquals(4, models.size());
    assertModel(models.get(0), "a", "sklearn", "joblib", "/models/a.joblib", "predict", Arrays.asList("a", "canary"), "{}", SHA, null);
    assertModel(
        models.get(1), "b", "pytorch", "state_dict", "/models/b.pt", "number", Arrays.asList("b"),
        "{\"device\":\"cuda\",\"model_class\":\"nets.digits:Net\",\"model_params\":{\"hidden\":32}}", null, null);
    assertModel(
        models.get(2), null, "onnx", "onnx", "/models/c.onnx", "number", Arrays.asList("c"), "{\"output_name\":\"y\"}",
        null, null);
    assertModel(
        models.get(3), "d", "handler", "xgboost_numpy", "/models/d.json", "number", Arrays.asList(),
        "{\"model_class\":\"XGBRegressor\"}", null, "/models/d-*.json");
    List<Row> pre = new ArrayList<>(decoded.getArray("preprocess"));
    assertEquals(2, pre.size());
    assertEquals("scale", pre.get(0).getString("name"));
    assertEquals("{\"factor\":0.5}", pre.get(0).getString("params"));
    assertEquals("pad", pre.get(1).getString("name"));
    assertEquals("{\"length\":64,\"value\":-1.0}", pre.get(1).getString("params"));
    List<Row> post = new ArrayList<>(decoded.getArray("postprocess"));
    assertEquals(2, post.size());
    assertEquals("threshold", post.get(0).getString("name"));
    assertEquals("{\"value\":0.5}", post.get(0).getString("params"));
    assertEquals("labels", post.get(1).getString("name"));
    assertEquals("{\"names\":[\"no\",\"yes\"]}", post.get(1).getString("params"));
    assertEquals(Long.valueOf(4), decoded.getInt64("min_batch_size"));
    assertEquals(Long.valueOf(32), decoded.getInt64("max_batch_size"));
    assertEquals(1.5, decoded.getDouble("max_batch_duration_secs"), 0);
    assertEquals("pad", decoded.getString("variable_length"));
    assertEquals(-1.0, decoded.getDouble("pad_value"), 0);
    assertEquals(Long.valueOf(2), decoded.getInt64("max_models_per_worker"));
    assertEquals(30.0, decoded.getDouble("watch_interval_secs"), 0);
    assertEquals("4GB", decoded.getString("min_ram"));
    assertEquals("type:nvidia-tesla-t4;count:1", decoded.getString("accelerator"));
    assertEquals("Digits", decoded.getString("metrics_namespace"));
    assertEquals(InferenceConfig.toRow(inference), decoded);
  }

  private static void assertModel(
      Row m, String id, String framework, String format, String uri, String output, List<String> keys,
      String options, String sha256, String watchPattern) {
    assertEquals(id, m.getString("model_id"));
    assertEquals(framework, m.getString("framework"));
    assertEquals(format, m.getString("format"));
    assertEquals(uri, m.getString("uri"));
    assertEquals(output, m.getString("output"));
    assertEquals(keys, new ArrayList<>(m.getArray("keys")));
    assertEquals(options, m.getString("options"));
    assertEquals(sha256, m.getString("sha256"));
    assertEquals(watchPattern, m.getString("watch_pattern"));
  }

  @Test
  public void settingsGivenInAnotherOrderGiveTheSameConfiguration() {
    Inference reordered =
        Inference.of(
                SklearnModel.joblib("/models/a.joblib").withSha256(SHA).withKeys("a", "canary").withModelId("a"),
                PytorchModel.stateDict("/models/b.pt", "nets.digits:Net")
                    .withOutput(ModelOutput.NUMBER)
                    .withKeys("b")
                    .withModelId("b")
                    .withDevice(Device.CUDA)
                    .withParams(Collections.singletonMap("hidden", 32)),
                OnnxModel.of("/models/c.onnx").withKeys("c").withOutput(ModelOutput.NUMBER).withOutputName("y"),
                BeamHandlerModel.of("xgboost_numpy", "/models/d.json")
                    .withWatchPattern("/models/d-*.json")
                    .withModelId("d")
                    .withOutput(ModelOutput.NUMBER)
                    .withArgument("model_class", "XGBRegressor"))
            .withMetricsNamespace("Digits")
            .withAccelerator("type:nvidia-tesla-t4;count:1")
            .withMinRam("4GB")
            .withWatchInterval(Duration.standardSeconds(30))
            .withMaxModelsPerWorker(2)
            .withVariableLength(VariableLength.PAD, -1)
            .withMaxBatchDuration(Duration.millis(1500))
            .withBatchSize(4, 32)
            .withPostprocess(Step.threshold(0.5), Step.labels("no", "yes"))
            .withPreprocess(Step.scale(0.5), Step.pad(64, -1))
            .withPassthroughFields("id", "label")
            .withFeatureFields("pixels", "extra")
            .withKeyField("variant");
    assertEquals(InferenceConfig.toRow(everything()), InferenceConfig.toRow(reordered));
  }

  @Test
  public void theTransformIsSerializableWithEverySetting() {
    Inference inference = everything();
    assertEquals(InferenceConfig.toRow(inference), InferenceConfig.toRow(SerializableUtils.clone(inference)));
  }

  @Test
  public void javaOnlySettingsStayOutOfTheRowAndLiveServicesAreNotSerialized() {
    Inference inference =
        everything()
            .withBlockSize(10)
            .withExpansionService("localhost:8097")
            .withServiceCredentials(ServiceCredentials.token("secret"));
    assertEquals(InferenceConfig.toRow(everything()), InferenceConfig.toRow(inference));
    InferenceConfig clone = SerializableUtils.clone(inference).config();
    assertEquals(Integer.valueOf(10), clone.get(InferenceConfig.BLOCK_SIZE));
    assertEquals("localhost:8097", clone.get(InferenceConfig.EXPANSION_SERVICE));
    assertNull(clone.get(InferenceConfig.SERVICE_CREDENTIALS));
  }

  @Test
  public void unsetOptionsTakeTheCompositeDefaults() {
    Row config =
        InferenceConfig.toRow(Inference.of(SklearnModel.pickle("/m.pkl")).withKeyField("k").withFeatureField("f"));
    assertEquals(Arrays.asList("f"), new ArrayList<>(config.getArray("feature_fields")));
    assertEquals(Arrays.asList(), new ArrayList<>(config.getArray("passthrough_fields")));
    assertEquals(Arrays.asList(), new ArrayList<>(config.getArray("preprocess")));
    assertEquals(Arrays.asList(), new ArrayList<>(config.getArray("postprocess")));
    Row model = new ArrayList<>(config.<Row>getArray("models")).get(0);
    assertNull(model.getString("model_id"));
    assertEquals("predict", model.getString("output"));
    assertEquals("{}", model.getString("options"));
    for (String nullable :
        Arrays.asList(
            "min_batch_size", "max_batch_size", "max_batch_duration_secs", "max_models_per_worker",
            "min_ram", "accelerator")) {
      assertNull(nullable, config.getValue(nullable));
    }
    assertEquals("bucket", config.getString("variable_length"));
    assertEquals(0.0, config.getDouble("pad_value"), 0);
    assertEquals(360.0, config.getDouble("watch_interval_secs"), 0);
    assertEquals("InferBridge", config.getString("metrics_namespace"));
  }

  @Test
  public void bucketingAgainResetsThePadValue() {
    Inference padded = Inference.of(SklearnModel.pickle("/m.pkl")).withKeyField("k").withFeatureField("f")
        .withVariableLength(VariableLength.PAD, 3);
    Row config = InferenceConfig.toRow(padded.withVariableLength(VariableLength.BUCKET));
    assertEquals("bucket", config.getString("variable_length"));
    assertEquals(0.0, config.getDouble("pad_value"), 0);
    assertEquals("pad", InferenceConfig.toRow(padded.withVariableLength(VariableLength.PAD)).getString("variable_length"));
  }
}

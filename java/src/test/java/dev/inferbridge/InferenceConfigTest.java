package dev.inferbridge;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;

import java.io.ByteArrayInputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.apache.beam.model.pipeline.v1.ExternalTransforms.ExternalConfigurationPayload;
import org.apache.beam.sdk.coders.RowCoder;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.SchemaTranslation;
import org.apache.beam.sdk.values.Row;
import org.junit.Test;

public class InferenceConfigTest {

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

  @Test
  public void payloadCarriesTheConfigurationRowAndItsSchema() throws Exception {
    Model model = SklearnModel.joblib("/models/m.joblib").withOutput(ModelOutput.PREDICT_PROBA).withModelId("m1");
    Row config =
        InferenceConfig.toRow(
            model, "id", "pixels", Arrays.asList(Step.scale(0.5)), Arrays.asList(Step.argmax(), Step.labels("a", "b")));

    ExternalConfigurationPayload payload = ExternalConfigurationPayload.parseFrom(InferenceConfig.payload(config));
    Schema schema = SchemaTranslation.schemaFromProto(payload.getSchema());
    Row decoded = RowCoder.of(schema).decode(new ByteArrayInputStream(payload.getPayload().toByteArray()));

    assertEquals("id", decoded.getString("key_field"));
    assertEquals(Arrays.asList("pixels"), new ArrayList<>(decoded.getArray("feature_fields")));
    assertEquals(Arrays.asList(), new ArrayList<>(decoded.getArray("passthrough_fields")));
    List<Row> models = new ArrayList<>(decoded.getArray("models"));
    assertEquals(1, models.size());
    Row m = models.get(0);
    assertEquals("m1", m.getString("model_id"));
    assertEquals("sklearn", m.getString("framework"));
    assertEquals("joblib", m.getString("format"));
    assertEquals("/models/m.joblib", m.getString("uri"));
    assertEquals("predict_proba", m.getString("output"));
    assertEquals(Arrays.asList(), new ArrayList<>(m.getArray("keys")));
    assertEquals("{}", m.getString("options"));
    assertNull(m.getString("sha256"));
    assertNull(m.getString("watch_pattern"));
    List<Row> pre = new ArrayList<>(decoded.getArray("preprocess"));
    assertEquals("scale", pre.get(0).getString("name"));
    assertEquals("{\"factor\":0.5}", pre.get(0).getString("params"));
    List<Row> post = new ArrayList<>(decoded.getArray("postprocess"));
    assertEquals("argmax", post.get(0).getString("name"));
    assertEquals("{}", post.get(0).getString("params"));
    assertEquals("{\"names\":[\"a\",\"b\"]}", post.get(1).getString("params"));
  }

  @Test
  public void unsetOptionsTakeTheCompositeDefaults() {
    Row config =
        InferenceConfig.toRow(SklearnModel.pickle("/m.pkl"), "k", "f", Arrays.asList(), Arrays.asList());
    Row model = new ArrayList<>(config.<Row>getArray("models")).get(0);
    assertNull(model.getString("model_id"));
    assertEquals("predict", model.getString("output"));
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
}

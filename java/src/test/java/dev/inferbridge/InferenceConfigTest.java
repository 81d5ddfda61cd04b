package dev.inferbridge;

import static org.junit.Assert.assertEquals;

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
    assertEquals("pixels", decoded.getString("feature_field"));
    assertEquals("sklearn", decoded.getString("model_framework"));
    assertEquals("joblib", decoded.getString("model_format"));
    assertEquals("/models/m.joblib", decoded.getString("model_uri"));
    assertEquals("m1", decoded.getString("model_id"));
    assertEquals("predict_proba", decoded.getString("model_output"));
    List<Row> pre = new ArrayList<>(decoded.getArray("preprocess"));
    assertEquals("scale", pre.get(0).getString("name"));
    assertEquals("{\"factor\":0.5}", pre.get(0).getString("params"));
    List<Row> post = new ArrayList<>(decoded.getArray("postprocess"));
    assertEquals("argmax", post.get(0).getString("name"));
    assertEquals("{}", post.get(0).getString("params"));
    assertEquals("{\"names\":[\"a\",\"b\"]}", post.get(1).getString("params"));
  }

  @Test
  public void modelIdIsNullWhenNotGiven() {
    Row config =
        InferenceConfig.toRow(SklearnModel.pickle("/m.pkl"), "k", "f", Arrays.asList(), Arrays.asList());
    assertEquals(null, config.getString("model_id"));
    assertEquals("predict", config.getString("model_output"));
  }
}

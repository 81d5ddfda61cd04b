package dev.inferbridge;

import static org.junit.Assert.assertEquals;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.TreeSet;
import org.junit.Test;

/** The Java model builders against Python's model catalog, tests/golden/models_v1.json. */
public class ModelCatalogTest {

  @SuppressWarnings("unchecked")
  private static Map<String, Object> framework(String name) throws Exception {
    String text =
        new String(
            Files.readAllBytes(Paths.get(System.getProperty("inferbridge.goldenDir"), "models_v1.json")),
            StandardCharsets.UTF_8);
    Map<String, Object> catalog = (Map<String, Object>) Json.read(text);
    return (Map<String, Object>) ((Map<String, Object>) catalog.get("frameworks")).get(name);
  }

  /** Output name -> kind, as the Java builder allows them. */
  private static Map<String, String> outputs(Model model) {
    Map<String, String> outputs = new TreeMap<>();
    for (ModelOutput output : model.allowedOutputs()) {
      outputs.put(output.wireName(), output.kind().name().toLowerCase(java.util.Locale.ROOT));
    }
    return outputs;
  }

  @SuppressWarnings("unchecked")
  private static void assertMatches(String name, List<? extends Model> models) throws Exception {
    Map<String, Object> expected = framework(name);
    List<String> formats = new ArrayList<>();
    for (Model model : models) {
      assertEquals(name, model.getFramework());
      formats.add(model.getFormat());
      assertEquals(name + " outputs", new TreeMap<>((Map<String, String>) expected.get("outputs")), outputs(model));
      Map<String, Object> options = (Map<String, Object>) ((Map<String, Object>) expected.get("options")).get(model.getFormat());
      if (options != null) {
        assertEquals(
            name + "/" + model.getFormat() + " options", new TreeSet<>(options.keySet()), new TreeSet<>(model.options().keySet()));
      }
    }
    assertEquals(name + " formats", expected.get("formats"), formats);
  }

  @Test
  public void sklearnModelsMatchTheCatalog() throws Exception {
    assertMatches("sklearn", Arrays.asList(SklearnModel.pickle("/m"), SklearnModel.joblib("/m"), SklearnModel.skops("/m")));
  }

  @Test
  public void pytorchModelsMatchTheCatalog() throws Exception {
    assertMatches(
        "pytorch",
        Arrays.asList(
            PytorchModel.stateDict("/m", "pkg.mod:Net").withParams(java.util.Collections.singletonMap("n", 1)),
            PytorchModel.torchScript("/m")));
  }

  @Test
  public void onnxModelsMatchTheCatalog() throws Exception {
    assertMatches("onnx", Arrays.asList(OnnxModel.of("/m").withOutputName("probabilities").withDevice(Device.CPU)));
  }

  @Test
  public void beamHandlersMatchTheCatalog() throws Exception {
    assertEquals(framework("handler").get("formats"), BeamHandlerModel.HANDLERS);
    List<Model> models = new ArrayList<>();
    for (String handler : BeamHandlerModel.HANDLERS) {
      models.add(BeamHandlerModel.of(handler, "/m"));
    }
    assertEquals(
        new TreeMap<>(castOutputs(framework("handler").get("outputs"))), outputs(models.get(0)));
  }

  @Test
  public void registeredModelsMatchTheCatalog() throws Exception {
    // Formats are the names packages register, found by the service; none are listed.
    assertEquals(java.util.Collections.emptyList(), framework("registered").get("formats"));
    Model model = BeamHandlerModel.registered("sentiment", "/m").withArgument("timeout_secs", 3);
    assertEquals("registered", model.getFramework());
    assertEquals(new TreeMap<>(castOutputs(framework("registered").get("outputs"))), outputs(model));
  }

  @Test
  public void endpointModelsMatchTheCatalog() throws Exception {
    assertMatches(
        "endpoint",
        Arrays.asList(
            EndpointModel.of("http://127.0.0.1:1/v1/m")
                .withTimeout(java.time.Duration.ofSeconds(3))
                .withRetries(2)
                .withThrottleDelay(java.time.Duration.ofSeconds(1))
                .withBearerTokenEnv("INFERBRIDGE_ENDPOINT_TOKEN_A")));
  }

  @SuppressWarnings("unchecked")
  private static Map<String, String> castOutputs(Object outputs) {
    return (Map<String, String>) outputs;
  }
}

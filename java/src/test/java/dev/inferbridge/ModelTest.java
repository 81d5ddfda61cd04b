package dev.inferbridge;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNotEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;
import org.apache.beam.sdk.util.SerializableUtils;
import org.junit.Test;

/** The model builders: defaults, options as the Python side reads them, and every check. */
public class ModelTest {
  private static final String SHA = "0123456789abcdef0123456789abcdef0123456789ABCDEF0123456789abcdef";

  private static String message(Class<? extends Throwable> type, org.junit.function.ThrowingRunnable r) {
    return assertThrows(type, r).getMessage();
  }

  @Test
  public void factoriesSetFrameworkFormatAndDefaultOutput() {
    assertModel(SklearnModel.pickle("/m.pkl"), "sklearn", "pickle", ModelOutput.PREDICT, "{}");
    assertModel(SklearnModel.joblib("/m.joblib"), "sklearn", "joblib", ModelOutput.PREDICT, "{}");
    assertModel(SklearnModel.skops("/m.skops"), "sklearn", "skops", ModelOutput.PREDICT, "{}");
    assertModel(
        PytorchModel.stateDict("/m.pt", "pkg.nets:Net"),
        "pytorch", "state_dict", ModelOutput.VECTOR,
        "{\"device\":\"cpu\",\"model_class\":\"pkg.nets:Net\",\"model_params\":{}}");
    assertModel(PytorchModel.torchScript("/m.pt"), "pytorch", "torchscript", ModelOutput.VECTOR, "{\"device\":\"cpu\"}");
    assertModel(OnnxModel.of("/m.onnx"), "onnx", "onnx", ModelOutput.VECTOR, "{}");
    assertModel(BeamHandlerModel.of("xgboost_numpy", "/m.json"), "handler", "xgboost_numpy", ModelOutput.VECTOR, "{}");
    assertModel(BeamHandlerModel.registered("sentiment", "http://127.0.0.1:1/m"), "registered", "sentiment", ModelOutput.VECTOR, "{}");
  }

  @Test
  public void endpointModelsTakeCallSettingsButNoFileSettings() {
    EndpointModel model =
        EndpointModel.of("http://127.0.0.1:1/v1/m")
            .withTimeout(java.time.Duration.ofMillis(2500))
            .withRetries(1)
            .withThrottleDelay(java.time.Duration.ofSeconds(2))
            .withBearerTokenEnv("INFERBRIDGE_ENDPOINT_TOKEN_A")
            .withOutput(ModelOutput.NUMBER);
    assertModel(
        model, "endpoint", "http_json", ModelOutput.NUMBER,
        "{\"bearer_token_env\":\"INFERBRIDGE_ENDPOINT_TOKEN_A\",\"num_retries\":1,\"throttle_delay_secs\":2,\"timeout_secs\":2.5}");
    assertEquals(
        "EndpointModel.withThrottleDelay(): PT0.5S is not whole seconds; allowed: 0 to 3600 whole seconds",
        message(IllegalArgumentException.class, () -> model.withThrottleDelay(java.time.Duration.ofMillis(500))));
    assertEquals(
        "EndpointModel.withRetries(): -1 is out of range; allowed: 0 to 20",
        message(IllegalArgumentException.class, () -> model.withRetries(-1)));
    assertEquals(
        "EndpointModel.withBearerTokenEnv(): \"AWS_SECRET\" is not allowed; allowed: names INFERBRIDGE_ENDPOINT_TOKEN_<NAME> (capitals, digits, '_')",
        message(IllegalArgumentException.class, () -> model.withBearerTokenEnv("AWS_SECRET")));
    assertTrue(
        message(IllegalArgumentException.class, () -> model.withSha256("0")).startsWith(
            "EndpointModel.withSha256(): this endpoint model is loaded (or called) by its handler"));
  }

  @Test
  public void registeredModelsTakeArgumentsButNoFileSettings() {
    BeamHandlerModel model =
        BeamHandlerModel.registered("sentiment", "/m").withArgument("timeout_secs", 3).withArgument("labels", new String[] {"a", "b"});
    assertEquals("{\"labels\":[\"a\",\"b\"],\"timeout_secs\":3}", model.optionsJson());
    assertEquals("sentiment", model.getHandler());
    assertEquals(
        "BeamHandlerModel.registered(): handler must be the non-empty name of a registered handler, got \" \"",
        message(IllegalArgumentException.class, () -> BeamHandlerModel.registered(" ", "/m")));
    assertEquals(
        "BeamHandlerModel.withArgument(): name must be a non-empty string, got null",
        message(IllegalArgumentException.class, () -> model.withArgument(null, 1)));
    assertTrue(
        message(IllegalArgumentException.class, () -> model.withSha256("0")).startsWith(
            "BeamHandlerModel.withSha256(): this registered handler model is loaded (or called) by its handler"));
    assertTrue(
        message(IllegalArgumentException.class, () -> model.withWatchPattern("/m*")).startsWith(
            "BeamHandlerModel.withWatchPattern(): this registered handler model is loaded (or called) by its handler"));
  }

  private static void assertModel(Model model, String framework, String format, ModelOutput output, String options) {
    assertEquals(framework, model.getFramework());
    assertEquals(format, model.getFormat());
    assertEquals(output, model.getOutput());
    assertEquals(options, model.optionsJson());
    assertNull(model.getModelId());
    assertEquals(Collections.emptyList(), model.getKeys());
    assertNull(model.getSha256());
    assertNull(model.getWatchPattern());
  }

  @Test
  public void optionsAreTheJsonObjectPythonReads() {
    Map<String, Object> params = new LinkedHashMap<>();
    params.put("hidden", 32);
    params.put("layers", Arrays.asList(64, 32));
    params.put("dropout", 0.5);
    params.put("act", "relu");
    params.put("bias", true);
    params.put("extra", null);
    params.put("nested", Collections.singletonMap("a", 1));
    assertEquals(
        "{\"device\":\"cuda\",\"model_class\":\"pkg.nets:Net\",\"model_params\":{\"act\":\"relu\",\"bias\":true,"
            + "\"dropout\":0.5,\"extra\":null,\"hidden\":32,\"layers\":[64,32],\"nested\":{\"a\":1}}}",
        PytorchModel.stateDict("/m.pt", "pkg.nets:Net").withParams(params).withDevice(Device.CUDA).optionsJson());
    assertEquals("{\"device\":\"cuda\"}", PytorchModel.torchScript("/m.pt").withDevice(Device.CUDA).optionsJson());
    assertEquals(
        "{\"device\":\"cuda\",\"output_name\":\"probabilities\"}",
        OnnxModel.of("/m.onnx").withOutputName("probabilities").withDevice(Device.CUDA).optionsJson());
    assertEquals("{\"output_name\":\"y\"}", OnnxModel.of("/m.onnx").withOutputName("y").optionsJson());
    assertEquals(
        "{\"model_class\":\"XGBClassifier\",\"n\":[1.0,2.5],\"opts\":{\"k\":\"v\"}}",
        BeamHandlerModel.of("xgboost_numpy", "/m.json")
            .withArgument("opts", Collections.singletonMap("k", "v"))
            .withArgument("n", new double[] {1, 2.5})
            .withArgument("model_class", "XGBRegressor")
            .withArgument("model_class", "XGBClassifier")
            .optionsJson());
  }

  @Test
  public void everyModelTakesIdKeysDigestAndPattern() {
    SklearnModel model =
        SklearnModel.pickle("/m.pkl").withModelId("m").withKeys("a", "b").withSha256(SHA).withOutput(ModelOutput.PREDICT_PROBA);
    assertEquals("m", model.getModelId());
    assertEquals("m", model.id());
    assertEquals(Arrays.asList("a", "b"), model.getKeys());
    assertEquals(SHA, model.getSha256());
    assertEquals(ModelOutput.PREDICT_PROBA, model.getOutput());
    assertEquals("/m.pkl", SklearnModel.pickle("/m.pkl").id());
    assertEquals(Collections.emptyList(), model.withKeys().getKeys());
    PytorchModel torch = PytorchModel.torchScript("/t.pt").withWatchPattern("/t-*.pt").withKeys("x").withModelId("t");
    assertEquals("/t-*.pt", torch.getWatchPattern());
    OnnxModel onnx = OnnxModel.of("/o.onnx").withOutput(ModelOutput.NUMBER).withModelId("o").withKeys("k").withSha256(SHA);
    assertEquals(ModelOutput.NUMBER, onnx.getOutput());
    BeamHandlerModel handler = BeamHandlerModel.of("sklearn_numpy", "/h.pkl").withModelId("h").withKeys("z").withWatchPattern("/h*");
    assertEquals("sklearn_numpy", handler.getHandler());
  }

  @Test
  public void withMethodsLeaveTheOriginalUnchangedAndEqualityIsByValue() {
    SklearnModel base = SklearnModel.pickle("/m.pkl");
    SklearnModel changed = base.withModelId("m").withKeys("a");
    assertNull(base.getModelId());
    assertEquals(Collections.emptyList(), base.getKeys());
    assertEquals(changed, SklearnModel.pickle("/m.pkl").withKeys("a").withModelId("m"));
    assertEquals(changed.hashCode(), SklearnModel.pickle("/m.pkl").withKeys("a").withModelId("m").hashCode());
    assertNotEquals(changed, SklearnModel.joblib("/m.pkl").withKeys("a").withModelId("m"));
    assertNotEquals(PytorchModel.torchScript("/m"), PytorchModel.torchScript("/m").withDevice(Device.CUDA));
    PytorchModel torch = PytorchModel.stateDict("/m.pt", "p:N").withParams(Collections.singletonMap("h", 3));
    assertEquals(torch, SerializableUtils.clone(torch));
    assertEquals(changed, SerializableUtils.clone(changed));
    assertTrue(changed.toString(), changed.toString().startsWith("SklearnModel{format=pickle, uri=/m.pkl"));
  }

  @Test
  public void outputsOutsideTheFrameworkAreRejected() {
    assertEquals(
        "SklearnModel.withOutput(): VECTOR is not an output of scikit-learn models; allowed: PREDICT, PREDICT_PROBA",
        message(IllegalArgumentException.class, () -> SklearnModel.pickle("/m").withOutput(ModelOutput.VECTOR)));
    assertEquals(
        "PytorchModel.withOutput(): PREDICT_PROBA is not an output of PyTorch models; allowed: VECTOR, NUMBER",
        message(IllegalArgumentException.class, () -> PytorchModel.torchScript("/m").withOutput(ModelOutput.PREDICT_PROBA)));
    assertEquals(
        "OnnxModel.withOutput(): null is not an output of ONNX models; allowed: VECTOR, NUMBER",
        message(IllegalArgumentException.class, () -> OnnxModel.of("/m").withOutput(null)));
    assertEquals(
        "BeamHandlerModel.withOutput(): PREDICT is not an output of Beam handler models; allowed: VECTOR, NUMBER",
        message(IllegalArgumentException.class, () -> BeamHandlerModel.of("sklearn_numpy", "/m").withOutput(ModelOutput.PREDICT)));
  }

  @Test
  public void badSettingsNameTheMethodTheValueAndWhatIsAllowed() {
    assertEquals(
        "SklearnModel.pickle(): uri must be a non-empty path or URI, got null",
        message(IllegalArgumentException.class, () -> SklearnModel.pickle(null)));
    assertEquals(
        "SklearnModel.skops(): uri must be a non-empty path or URI, got \" \"",
        message(IllegalArgumentException.class, () -> SklearnModel.skops(" ")));
    assertEquals(
        "OnnxModel.of(): uri must be a non-empty path or URI, got \"\"",
        message(IllegalArgumentException.class, () -> OnnxModel.of("")));
    assertEquals(
        "SklearnModel.withModelId(): modelId must be a non-empty string, got \"\"",
        message(IllegalArgumentException.class, () -> SklearnModel.pickle("/m").withModelId("")));
    assertEquals(
        "OnnxModel.withKeys(): key \"a\" is given twice; give each key once",
        message(IllegalArgumentException.class, () -> OnnxModel.of("/m").withKeys("a", "b", "a")));
    assertEquals(
        "PytorchModel.withKeys(): keys must be non-empty strings, got \"\"",
        message(IllegalArgumentException.class, () -> PytorchModel.torchScript("/m").withKeys("a", "")));
    assertEquals(
        "SklearnModel.withKeys(): keys must be non-empty strings, got null",
        message(IllegalArgumentException.class, () -> SklearnModel.pickle("/m").withKeys("a", null)));
    assertEquals(
        "SklearnModel.withSha256(): \"abc\" is not a SHA-256 digest; allowed: 64 hexadecimal digits",
        message(IllegalArgumentException.class, () -> SklearnModel.pickle("/m").withSha256("abc")));
    assertEquals(
        "SklearnModel.withWatchPattern(): pattern must be a non-empty file pattern, got null",
        message(IllegalArgumentException.class, () -> SklearnModel.pickle("/m").withWatchPattern(null)));
    String combined = "withSha256() and withWatchPattern() cannot be combined: every refreshed file would "
        + "need the pinned digest; remove one of them";
    assertEquals(
        "SklearnModel.withWatchPattern(): " + combined,
        message(IllegalArgumentException.class, () -> SklearnModel.pickle("/m").withSha256(SHA).withWatchPattern("/m*")));
    assertEquals(
        "OnnxModel.withSha256(): " + combined,
        message(IllegalArgumentException.class, () -> OnnxModel.of("/m").withWatchPattern("/m*").withSha256(SHA)));
  }

  @Test
  public void frameworkSettingsAreChecked() {
    assertEquals(
        "PytorchModel.stateDict(): modelClass \"Net\" is not a class path; allowed: \"package.module:Class\"",
        message(IllegalArgumentException.class, () -> PytorchModel.stateDict("/m.pt", "Net")));
    assertEquals(
        "PytorchModel.stateDict(): modelClass \"pkg.nets:Net()\" is not a class path; allowed: \"package.module:Class\"",
        message(IllegalArgumentException.class, () -> PytorchModel.stateDict("/m.pt", "pkg.nets:Net()")));
    assertEquals("pkg:Outer.Inner", PytorchModel.stateDict("/m.pt", "pkg:Outer.Inner").getModelClass());
    assertEquals(
        "PytorchModel.withParams(): a TorchScript model takes no constructor parameters; withParams() is for "
            + "PytorchModel.stateDict(uri, modelClass)",
        message(IllegalArgumentException.class, () -> PytorchModel.torchScript("/m.pt").withParams(Collections.<String, Object>emptyMap())));
    assertEquals(
        "PytorchModel.withParams(): params.rate is NaN; allowed: finite numbers",
        message(IllegalArgumentException.class,
            () -> PytorchModel.stateDict("/m.pt", "p:N").withParams(Collections.singletonMap("rate", Double.NaN))));
    assertTrue(
        message(IllegalArgumentException.class,
            () -> PytorchModel.stateDict("/m.pt", "p:N").withParams(Collections.singletonMap("x", new Object())))
            .startsWith("PytorchModel.withParams(): params.x holds a java.lang.Object"));
    assertEquals(
        "PytorchModel.withDevice(): device must not be null; allowed: CPU, CUDA",
        message(IllegalArgumentException.class, () -> PytorchModel.torchScript("/m.pt").withDevice(null)));
    assertEquals(
        "OnnxModel.withOutputName(): outputName must be a non-empty string, got \"\"",
        message(IllegalArgumentException.class, () -> OnnxModel.of("/m").withOutputName("")));
    assertEquals(
        "BeamHandlerModel.of(): handler \"pytorch\" is not supported; allowed: sklearn_numpy, xgboost_numpy, tensorflow_numpy",
        message(IllegalArgumentException.class, () -> BeamHandlerModel.of("pytorch", "/m")));
    assertEquals(
        "BeamHandlerModel.withArgument(): name must be a non-empty string, got null",
        message(IllegalArgumentException.class, () -> BeamHandlerModel.of("sklearn_numpy", "/m").withArgument(null, 1)));
    assertEquals(
        "BeamHandlerModel.withArgument(\"x\")[1] is Infinity; allowed: finite numbers",
        message(IllegalArgumentException.class,
            () -> BeamHandlerModel.of("sklearn_numpy", "/m").withArgument("x", Arrays.asList(1, Double.POSITIVE_INFINITY))));
    assertEquals(
        "BeamHandlerModel.withArgument(\"x\") has the key 1; JSON object keys are strings",
        message(IllegalArgumentException.class,
            () -> BeamHandlerModel.of("sklearn_numpy", "/m").withArgument("x", Collections.singletonMap(1, 2))));
  }
}

package dev.inferbridge;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import org.apache.beam.sdk.util.SerializableUtils;
import org.junit.Test;
import org.junit.function.ThrowingRunnable;

/** The step builders and the step catalog they are checked against. */
public class StepTest {

  private static String message(ThrowingRunnable r) {
    return assertThrows(IllegalArgumentException.class, r).getMessage();
  }

  private static Map<String, Object> params(Object... nameValuePairs) {
    Map<String, Object> params = new LinkedHashMap<>();
    for (int i = 0; i < nameValuePairs.length; i += 2) {
      params.put((String) nameValuePairs[i], nameValuePairs[i + 1]);
    }
    return params;
  }

  /** One step from each factory, every built-in covered. */
  private static List<Step> everyFactory() {
    Map<String, String> mapping = new LinkedHashMap<>();
    mapping.put("0", "cat");
    return Arrays.asList(
        Step.scale(0.5), Step.normalize(1, 2), Step.reshape(8, -1), Step.cast(Step.Dtype.FLOAT32),
        Step.pad(4), Step.truncate(3), Step.argmax(), Step.softmax(), Step.topK(2), Step.threshold(0.5),
        Step.round(), Step.labels("a"), Step.labelMap(mapping), Step.scores("a", "b"));
  }

  @Test
  public void theCatalogOnTheClasspathIsTheGoldenFile() throws Exception {
    byte[] golden = Files.readAllBytes(Paths.get(System.getProperty("inferbridge.goldenDir"), "steps_v1.json"));
    try (InputStream in = StepCatalog.class.getResourceAsStream(StepCatalog.RESOURCE)) {
      byte[] packaged = new byte[golden.length + 1];
      int n = 0;
      for (int read; n < packaged.length && (read = in.read(packaged, n, packaged.length - n)) > 0; ) {
        n += read;
      }
      assertArrayEquals(golden, Arrays.copyOf(packaged, n));
    }
  }

  @Test
  public void theCatalogHasEveryStepWithItsStageAndKinds() {
    assertEquals(
        Arrays.asList("scale", "normalize", "reshape", "cast", "pad", "truncate"),
        StepCatalog.names(StepCatalog.PREPROCESS));
    assertEquals(
        Arrays.asList("argmax", "softmax", "top_k", "threshold", "round", "labels", "label_map", "scores"),
        StepCatalog.names(StepCatalog.POSTPROCESS));
    StepCatalog.Definition labelMap = StepCatalog.lookup("label_map");
    assertEquals(java.util.EnumSet.of(InferenceKind.INTEGER, InferenceKind.LABEL), labelMap.accepts);
    assertEquals(InferenceKind.LABEL, labelMap.produces);
    assertEquals(InferenceKind.MAP, StepCatalog.lookup("top_k").produces);
    assertNull(StepCatalog.lookup("scale").produces);
    assertEquals("length (a positive integer), value (a number, default 0.0)", StepCatalog.lookup("pad").describeParams());
    assertNull(StepCatalog.lookup("my_step"));
  }

  @Test
  public void thereIsAFactoryForEveryBuiltInStep() {
    List<String> made = new ArrayList<>();
    for (Step step : everyFactory()) {
      made.add(step.getName());
    }
    assertEquals(new LinkedHashSet<>(StepCatalog.steps().keySet()), new LinkedHashSet<>(made));
    List<String> dtypes = new ArrayList<>();
    for (Step.Dtype dtype : Step.Dtype.values()) {
      dtypes.add(dtype.wireName());
    }
    assertEquals(StepCatalog.lookup("cast").params.get(0).choices, dtypes);
  }

  @Test
  public void factoriesEncodeTheirParametersAsJson() {
    assertEquals("{\"factor\":0.0625}", Step.scale(1.0 / 16).paramsJson());
    assertEquals("{\"mean\":1.5,\"std\":2.0}", Step.normalize(1.5, 2).paramsJson());
    assertEquals(
        "{\"mean\":[0.0,1.0],\"std\":[1.0,2.0]}", Step.normalize(new double[] {0, 1}, new double[] {1, 2}).paramsJson());
    assertEquals("{\"shape\":[8,8,-1]}", Step.reshape(8, 8, -1).paramsJson());
    assertEquals("{\"dtype\":\"int64\"}", Step.cast(Step.Dtype.INT64).paramsJson());
    assertEquals("{\"length\":4}", Step.pad(4).paramsJson());
    assertEquals("{\"length\":4,\"value\":-1.0}", Step.pad(4, -1).paramsJson());
    assertEquals("{\"length\":3}", Step.truncate(3).paramsJson());
    assertEquals("{}", Step.argmax().paramsJson());
    assertEquals("{}", Step.softmax().paramsJson());
    assertEquals("{\"k\":2}", Step.topK(2).paramsJson());
    assertEquals("{\"k\":2,\"names\":[\"a\",\"b\",\"c\"]}", Step.topK(2, "a", "b", "c").paramsJson());
    assertEquals("{\"names\":[\"a\",\"b\"]}", Step.scores("a", "b").paramsJson());
    assertEquals("{\"value\":0.5}", Step.threshold(0.5).paramsJson());
    assertEquals("{}", Step.round().paramsJson());
    assertEquals("{\"names\":[\"cat\",\"say \\\"hi\\\"\\\\\"]}", Step.labels("cat", "say \"hi\"\\").paramsJson());
    Map<String, String> mapping = new LinkedHashMap<>();
    mapping.put("1", "dog");
    mapping.put("0", "cat");
    assertEquals("{\"mapping\":{\"0\":\"cat\",\"1\":\"dog\"}}", Step.labelMap(mapping).paramsJson());
    assertEquals("top_k", Step.topK(1).getName());
    assertEquals("label_map", Step.labelMap(mapping).getName());
  }

  @Test
  public void namedBuiltInsAreTheFactoriesSteps() {
    assertEquals(Step.topK(2, "a", "b"), Step.named("top_k", params("k", 2, "names", Arrays.asList("a", "b"))));
    assertEquals(Step.reshape(2, -1), Step.named("reshape", params("shape", new int[] {2, -1})));
    assertEquals(Step.argmax(), Step.named("argmax", Collections.<String, Object>emptyMap()));
  }

  @Test
  public void namedUserStepsTakeJsonValuesAndMayDeclareWhatTheyProduce() {
    Map<String, Object> p = params("k", 3, "on", true, "bounds", Arrays.asList(0.5, 1), "names", new String[] {"x"},
        "opts", Collections.singletonMap("a", null));
    Step step = Step.named("my_step", p);
    assertEquals("{\"bounds\":[0.5,1],\"k\":3,\"names\":[\"x\"],\"on\":true,\"opts\":{\"a\":null}}", step.paramsJson());
    assertNull(step.getProducing());
    Step labelled = step.producing(InferenceKind.LABEL);
    assertEquals(InferenceKind.LABEL, labelled.getProducing());
    assertNull(step.getProducing());
    assertEquals(labelled, SerializableUtils.clone(labelled));
    assertEquals("my_step{\"bounds\":[0.5,1],\"k\":3,\"names\":[\"x\"],\"on\":true,\"opts\":{\"a\":null}} producing LABEL",
        labelled.toString());
  }

  @Test
  public void parametersAreCheckedByKindAsPythonChecksThem() {
    assertEquals("Step.scale(): parameter 'factor' is NaN; allowed: finite numbers", message(() -> Step.scale(Double.NaN)));
    assertEquals(
        "Step.named(\"scale\"): parameter 'factor' must be a number, got \"2\"",
        message(() -> Step.named("scale", params("factor", "2"))));
    assertEquals(
        "Step.pad(): parameter 'length' must be a positive integer, got 0", message(() -> Step.pad(0)));
    assertEquals(
        "Step.named(\"truncate\"): parameter 'length' must be a positive integer, got 3.0",
        message(() -> Step.named("truncate", params("length", 3.0))));
    assertEquals(
        "Step.normalize(): parameter 'mean' must be a finite number or a non-empty list of finite numbers, got []",
        message(() -> Step.normalize(new double[0], new double[0])));
    assertEquals(
        "Step.labels(): parameter 'names' must be a non-empty list of strings, got []", message(() -> Step.labels()));
    assertEquals(
        "Step.scores(): parameter 'names' must be a non-empty list of strings, got [\"a\",null]",
        message(() -> Step.scores("a", null)));
    assertEquals(
        "Step.labelMap(): parameter 'mapping' must be a non-empty map of strings to strings, got {}",
        message(() -> Step.labelMap(Collections.<String, String>emptyMap())));
    assertEquals(
        "Step.reshape(): parameter 'shape' must be a non-empty list of positive integers with at most one -1, got [-1,4,-1]",
        message(() -> Step.reshape(-1, 4, -1)));
    assertEquals(
        "Step.reshape(): parameter 'shape' must be a non-empty list of positive integers with at most one -1, got [0]",
        message(() -> Step.reshape(0)));
    assertEquals(
        "Step.named(\"cast\"): parameter 'dtype' must be one of float32, float64, int32, int64, got \"float16\"",
        message(() -> Step.named("cast", params("dtype", "float16"))));
    assertEquals(
        "Step.cast(): parameter 'dtype' is required; allowed: dtype (one of float32, float64, int32, int64)",
        message(() -> Step.cast(null)));
    assertEquals(
        "Step.named(\"pad\"): unknown parameter(s) 'fill', 'size'; allowed: length (a positive integer), value (a number, default 0.0)",
        message(() -> Step.named("pad", params("size", 3, "fill", 1))));
    assertEquals(
        "Step.named(\"top_k\"): parameter 'k' is required; allowed: k (a positive integer), names (a non-empty list of strings, optional)",
        message(() -> Step.named("top_k", params("names", null))));
  }

  @Test
  public void relatedParametersAreCheckedTogether() {
    assertEquals(
        "Step.normalize(): parameter 'std' must be non-zero everywhere, got 0.0", message(() -> Step.normalize(0, 0)));
    assertEquals(
        "Step.normalize(): parameter 'std' must be non-zero everywhere, got [1.0,0.0]",
        message(() -> Step.normalize(new double[] {0, 0}, new double[] {1, 0})));
    assertEquals(
        "Step.normalize(): parameters 'mean' and 'std' must have the same length, got 2 and 3",
        message(() -> Step.normalize(new double[] {0, 0}, new double[] {1, 1, 1})));
    assertEquals(
        "Step.topK(): parameter 'k' must be at most the 2 names, got 3", message(() -> Step.topK(3, "a", "b")));
    assertEquals(
        "Step.topK(): parameter 'names' must be distinct strings (they become map keys), got [\"a\",\"a\"]",
        message(() -> Step.topK(1, "a", "a")));
    assertEquals(
        "Step.named(\"scores\"): parameter 'names' must be distinct strings (they become map keys), got [\"a\",\"a\"]",
        message(() -> Step.named("scores", params("names", Arrays.asList("a", "a")))));
  }

  @Test
  public void badNamedStepsAndDeclarationsAreRejected() {
    assertEquals("Step.named(): name must be a non-empty string, got \" \"", message(() -> Step.named(" ", params())));
    assertEquals(
        "Step.named(\"s\"): params must not be null; pass an empty map for none", message(() -> Step.named("s", null)));
    String object = message(() -> Step.named("s", params("p", new Object() {
      @Override
      public String toString() {
        return "thing";
      }
    })));
    assertTrue(object, object.startsWith("Step.named(\"s\"): params.p holds a "));
    assertTrue(object, object.endsWith("(thing), which is not a JSON value; allowed: strings, numbers, booleans, "
        + "null, lists and maps with string keys"));
    assertEquals(
        "Step.producing(LABEL): 'argmax' is a built-in postprocess step, which produces INTEGER; producing() is for "
            + "steps registered by Python packages",
        message(() -> Step.argmax().producing(InferenceKind.LABEL)));
    assertEquals(
        "Step.producing(LABEL): 'scale' is a built-in preprocess step; producing() is for steps registered by Python packages",
        message(() -> Step.scale(2).producing(InferenceKind.LABEL)));
    assertEquals(
        "Step.producing(): kind must not be null; allowed: VECTOR, NUMBER, INTEGER, LABEL, MAP",
        message(() -> Step.named("s", params()).producing(null)));
  }

  @Test
  public void inferenceKindsFollowTheCatalog() {
    assertEquals(InferenceKind.NUMBER, StepCatalog.kindAfter(ModelOutput.PREDICT, Collections.<Step>emptyList()));
    assertEquals(InferenceKind.VECTOR, StepCatalog.kindAfter(ModelOutput.VECTOR, Collections.<Step>emptyList()));
    assertEquals(InferenceKind.INTEGER, kindAfter(ModelOutput.PREDICT_PROBA, Step.argmax()));
    assertEquals(InferenceKind.VECTOR, kindAfter(ModelOutput.VECTOR, Step.softmax()));
    assertEquals(InferenceKind.MAP, kindAfter(ModelOutput.VECTOR, Step.softmax(), Step.topK(2)));
    assertEquals(InferenceKind.MAP, kindAfter(ModelOutput.PREDICT_PROBA, Step.scores("a", "b")));
    assertEquals(InferenceKind.INTEGER, kindAfter(ModelOutput.NUMBER, Step.threshold(0.5)));
    assertEquals(InferenceKind.INTEGER, kindAfter(ModelOutput.PREDICT, Step.round()));
    assertEquals(InferenceKind.LABEL, kindAfter(ModelOutput.PREDICT, Step.round(), Step.labels("a", "b")));
    Map<String, String> mapping = Collections.singletonMap("0", "zero");
    assertEquals(InferenceKind.LABEL, kindAfter(ModelOutput.PREDICT, Step.round(), Step.labelMap(mapping)));
    assertEquals(
        InferenceKind.LABEL, kindAfter(ModelOutput.PREDICT, Step.round(), Step.labels("a"), Step.labelMap(mapping)));
    // A user step's kind is what it declares; an undeclared one in the middle is checked by Python.
    assertEquals(InferenceKind.NUMBER, kindAfter(ModelOutput.VECTOR, Step.named("mean", params()).producing(InferenceKind.NUMBER)));
    assertEquals(InferenceKind.INTEGER, kindAfter(ModelOutput.PREDICT, Step.named("embed", params()), Step.argmax()));
    assertEquals(
        "withPostprocess(): step 'argmax' takes a vector but receives a number here (from the model output PREDICT); "
            + "reorder the steps or change the model's withOutput()",
        message(() -> kindAfter(ModelOutput.PREDICT, Step.argmax())));
    assertEquals(
        "withPostprocess(): step 'label_map' takes an integer or label but receives a map here (from step 'top_k'); "
            + "reorder the steps or change the model's withOutput()",
        message(() -> kindAfter(ModelOutput.VECTOR, Step.topK(1), Step.labelMap(mapping))));
    assertEquals(
        "withPostprocess(): step 'round' takes a number but receives an integer here (from step 'mean'); "
            + "reorder the steps or change the model's withOutput()",
        message(() -> kindAfter(ModelOutput.VECTOR, Step.named("mean", params()).producing(InferenceKind.INTEGER), Step.round())));
    assertEquals(
        "withPostprocess(): the last step 'embed' is not a built-in step and declares no output kind, so the type of "
            + "the inference field is unknown; declare what it produces with Step.named(\"embed\", params)"
            + ".producing(kind), kind one of VECTOR, NUMBER, INTEGER, LABEL, MAP",
        message(() -> kindAfter(ModelOutput.VECTOR, Step.named("embed", params()))));
  }

  @Test
  public void catalogKindsThisLibraryCannotTypeAreLeftToPythonOrRefused() throws Exception {
    java.util.Map<String, StepCatalog.Definition> catalog = StepCatalog.parse(
        "[{\"name\": \"anything\", \"stage\": \"postprocess\", \"params\": [{\"name\": \"t\", \"kind\": \"tensor\", "
            + "\"required\": true, \"default\": null, \"choices\": []}], \"accepts\": [\"any\"], \"produces\": \"any\", "
            + "\"batched\": false}]");
    StepCatalog.Definition anything = catalog.get("anything");
    assertTrue(anything.accepts.isEmpty());
    assertNull(anything.produces);
    assertEquals("any", anything.producesName);
    assertTrue(anything.params.get(0).fits(Arrays.asList(1, 2)));
    assertEquals("t (a tensor value)", anything.describeParams());
  }

  private static InferenceKind kindAfter(ModelOutput output, Step... steps) {
    return StepCatalog.kindAfter(output, Arrays.asList(steps));
  }
}

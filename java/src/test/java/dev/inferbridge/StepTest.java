package dev.inferbridge;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;
import org.junit.Test;

public class StepTest {

  @Test
  public void builtInStepsEncodeTheirParametersAsJson() {
    assertEquals("{\"factor\":0.0625}", Step.scale(1.0 / 16).paramsJson());
    assertEquals("{\"mean\":1.5,\"std\":2.0}", Step.normalize(1.5, 2).paramsJson());
    assertEquals("{}", Step.argmax().paramsJson());
    assertEquals("{\"names\":[\"cat\",\"say \\\"hi\\\"\\\\\"]}", Step.labels("cat", "say \"hi\"\\").paramsJson());
  }

  @Test
  public void namedStepsTakeNumbersStringsBooleansAndLists() {
    Map<String, Object> params = new LinkedHashMap<>();
    params.put("k", 3);
    params.put("on", true);
    params.put("bounds", Arrays.asList(0.5, 1));
    assertEquals("{\"k\":3,\"on\":true,\"bounds\":[0.5,1]}", Step.named("my_step", params).paramsJson());
  }

  @Test
  public void badParametersAreRejectedWithTheMethodAndValue() {
    IllegalArgumentException nan = assertThrows(IllegalArgumentException.class, () -> Step.scale(Double.NaN));
    assertEquals("Step.scale(): factor must be a finite number, got NaN", nan.getMessage());
    IllegalArgumentException zero = assertThrows(IllegalArgumentException.class, () -> Step.normalize(0, 0));
    assertEquals("Step.normalize(): std must not be 0", zero.getMessage());
    assertThrows(IllegalArgumentException.class, () -> Step.labels());
    IllegalArgumentException object =
        assertThrows(
            IllegalArgumentException.class,
            () -> Step.named("s", Collections.singletonMap("p", new Object() {
              @Override
              public String toString() {
                return "thing";
              }
            })));
    assertTrue(object.getMessage(), object.getMessage().contains("parameter 'p' has unsupported value thing"));
  }
}

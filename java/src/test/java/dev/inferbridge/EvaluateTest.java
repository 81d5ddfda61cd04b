package dev.inferbridge;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import org.junit.Test;

public class EvaluateTest {

  private static List<String> golden(String file) throws Exception {
    List<String> lines = new ArrayList<>();
    for (String line : Files.readAllLines(Paths.get(System.getProperty("inferbridge.goldenDir"), file), StandardCharsets.UTF_8)) {
      if (!line.trim().isEmpty() && !line.startsWith("#")) {
        lines.add(line);
      }
    }
    return lines;
  }

  @Test
  public void configSchemaMatchesTheGoldenDescriptionSharedWithPython() throws Exception {
    assertEquals(golden("evaluate_v1.schema"), InferenceConfig.describe(Evaluate.CONFIG_SCHEMA));
  }

  @Test
  public void outputSchemaMatchesTheGoldenDescriptionSharedWithPython() throws Exception {
    assertEquals(golden("evaluate_v1_output.schema"), InferenceConfig.describe(Evaluate.OUTPUT_SCHEMA));
  }

  @Test
  public void configCarriesTheThreeFieldNames() {
    assertEquals(
        "label,pred,variant",
        String.join(",", Evaluate.of("label").withPredictionField("pred").withModelIdField("variant").config().getValues().toArray(new String[0])));
  }

  @Test
  public void emptyNamesAreRejectedNamingTheMethod() {
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Evaluate.of("label").withModelIdField(" "));
    assertTrue(e.getMessage(), e.getMessage().startsWith("Evaluate.withModelIdField(): must be a non-empty name"));
  }
}

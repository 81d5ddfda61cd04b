package dev.inferbridge.examples;

import dev.inferbridge.Inference;
import dev.inferbridge.LocalRun;
import dev.inferbridge.SklearnModel;
import dev.inferbridge.Step;
import java.util.ArrayList;
import java.util.List;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.transforms.Create;
import org.apache.beam.sdk.transforms.MapElements;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TypeDescriptors;

/**
 * Per-key models with a memory bound: six regions, three models, at most one model loaded per
 * worker at a time.
 *
 * <p>Each digit gets a region ({@code REGIONS[id % 6]}); {@code region_<i>.pkl} serves two
 * regions each. Writes {@code predictions.csv} ({@code id,region,model_id,prediction}) and prints
 * {@code rows=<n> models=<m>}, the number of distinct models that answered.
 */
public final class PerKeyModels {
  static final String[] REGIONS = {"north", "south", "east", "west", "centre", "islands"};

  static final Schema REGIONAL_SCHEMA =
      Schema.builder().addInt64Field("id").addStringField("region").addArrayField("pixels", FieldType.DOUBLE).build();

  private PerKeyModels() {}

  public static void main(String[] args) throws Exception {
    ExampleOptions options = ExampleOptions.parse(args);
    List<Row> rows = new ArrayList<>();
    for (Row digit : ExampleIo.readDigits(ExampleIo.data(options, "test_rows.csv"))) {
      long id = digit.getInt64("id");
      rows.add(Row.withSchema(REGIONAL_SCHEMA).attachValues(id, REGIONS[(int) (id % 6)], digit.getArray("pixels")));
    }
    try (LocalRun local = LocalRun.start(options)) {
      Pipeline pipeline = Pipeline.create(options);
      ExampleIo.writeLines(
          pipeline
              .apply(Create.of(rows).withRowSchema(REGIONAL_SCHEMA))
              .apply(
                  "Classify",
                  Inference.of(
                          regional(options, 0, "north", "south"),
                          regional(options, 1, "east", "west"),
                          regional(options, 2, "centre", "islands"))
                      .withKeyField("region")
                      .withFeatureFields("pixels")
                      .withPassthroughFields("id")
                      .withPreprocess(Step.scale(1.0 / 16))
                      .withPostprocess(Step.round())
                      .withMaxModelsPerWorker(1))
              .getInferences()
              .apply(
                  "Format",
                  MapElements.into(TypeDescriptors.strings())
                      .via((Row r) -> r.getInt64("id") + "," + r.getString("key") + "," + r.getString("model_id") + "," + r.getInt64("inference"))),
          "Predictions",
          ExampleIo.output(options, "predictions.csv").toString());
      ExampleIo.runToCompletion(pipeline);
      String[] lines = ExampleIo.read(ExampleIo.output(options, "predictions.csv")).split("\n");
      java.util.Set<String> models = new java.util.TreeSet<>();
      for (String line : lines) {
        models.add(line.split(",")[2]);
      }
      System.out.println("rows=" + lines.length + " models=" + models.size());
    }
  }

  private static SklearnModel regional(ExampleOptions options, int i, String... regions) {
    return SklearnModel.pickle(ExampleIo.data(options, "region_" + i + ".pkl").toString()).withModelId("region_" + i).withKeys(regions);
  }
}

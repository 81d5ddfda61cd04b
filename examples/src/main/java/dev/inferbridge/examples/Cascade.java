package dev.inferbridge.examples;

import dev.inferbridge.Inference;
import dev.inferbridge.LocalRun;
import dev.inferbridge.ModelOutput;
import dev.inferbridge.SklearnModel;
import dev.inferbridge.Step;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.transforms.MapElements;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TypeDescriptors;

/**
 * A cascade: model A, a postprocessing step, then model B on model A's output.
 *
 * <p>Stage one gives each digit's class probabilities ({@code digits.pkl}, {@code predict_proba})
 * and {@code softmax} smooths them; stage two ({@code cascade_high.pkl}) reads that vector and
 * says whether the digit is 5 or more, labelled {@code low} / {@code high}. Writes
 * {@code cascade.csv} ({@code id,label,stage_two}) and prints {@code rows=<n> high=<h>}.
 */
public final class Cascade {
  private Cascade() {}

  public static void main(String[] args) throws Exception {
    ExampleOptions options = ExampleOptions.parse(args);
    try (LocalRun local = LocalRun.start(options)) {
      Pipeline pipeline = Pipeline.create(options);
      PCollection<Row> digits = ExampleIo.digits(pipeline, options);
      PCollection<Row> probabilities =
          digits
              .apply(
                  "StageOne",
                  Inference.of(SklearnModel.pickle(ExampleIo.data(options, "digits.pkl").toString()).withOutput(ModelOutput.PREDICT_PROBA))
                      .withKeyField("id")
                      .withFeatureFields("pixels")
                      .withPassthroughFields("label")
                      .withPreprocess(Step.scale(1.0 / 16))
                      .withPostprocess(Step.softmax()))
              .getInferences();
      PCollection<Row> highOrLow =
          probabilities
              .apply(
                  "StageTwo",
                  Inference.of(SklearnModel.pickle(ExampleIo.data(options, "cascade_high.pkl").toString()))
                      .withKeyField("key")
                      .withFeatureFields("inference")
                      .withPassthroughFields("label")
                      .withPostprocess(Step.round(), Step.labels("low", "high")))
              .getInferences();
      ExampleIo.writeLines(
          highOrLow.apply(
              "Format",
              MapElements.into(TypeDescriptors.strings())
                  .via((Row r) -> r.getInt64("key") + "," + r.getInt64("label") + "," + r.getString("inference"))),
          "Cascade",
          ExampleIo.output(options, "cascade.csv").toString());
      ExampleIo.runToCompletion(pipeline);
      String[] lines = ExampleIo.read(ExampleIo.output(options, "cascade.csv")).split("\n");
      long high = 0;
      for (String line : lines) {
        high += line.endsWith(",high") ? 1 : 0;
      }
      System.out.println("rows=" + lines.length + " high=" + high);
    }
  }
}

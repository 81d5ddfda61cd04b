package dev.inferbridge.examples;

import dev.inferbridge.Inference;
import dev.inferbridge.LocalRun;
import dev.inferbridge.PytorchModel;
import dev.inferbridge.Step;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.transforms.MapElements;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TypeDescriptors;

/**
 * A PyTorch model from a Java pipeline: the TorchScript network of {@code train_examples.py}
 * gives class scores, {@code argmax} picks the digit.
 *
 * <p>Writes {@code predictions.csv} ({@code id,label,prediction}) and prints
 * {@code rows=<n> correct=<c>}. TorchScript runs code when loaded, so the service must trust the
 * data directory ({@code --trusted-model-root}).
 */
public final class PytorchDigits {
  private PytorchDigits() {}

  public static void main(String[] args) throws Exception {
    ExampleOptions options = ExampleOptions.parse(args);
    try (LocalRun local = LocalRun.start(options)) {
      Pipeline pipeline = Pipeline.create(options);
      ExampleIo.writeLines(
          ExampleIo.digits(pipeline, options)
              .apply(
                  "Classify",
                  Inference.of(PytorchModel.torchScript(ExampleIo.data(options, "digits.ts").toString()))
                      .withKeyField("id")
                      .withFeatureFields("pixels")
                      .withPassthroughFields("label")
                      .withPreprocess(Step.scale(1.0 / 16))
                      .withPostprocess(Step.argmax()))
              .getInferences()
              .apply(
                  "Format",
                  MapElements.into(TypeDescriptors.strings())
                      .via((Row r) -> r.getInt64("key") + "," + r.getInt64("label") + "," + r.getInt64("inference"))),
          "Predictions",
          ExampleIo.output(options, "predictions.csv").toString());
      ExampleIo.runToCompletion(pipeline);
      String[] lines = ExampleIo.read(ExampleIo.output(options, "predictions.csv")).split("\n");
      long correct = 0;
      for (String line : lines) {
        String[] cells = line.split(",");
        correct += cells[1].equals(cells[2]) ? 1 : 0;
      }
      System.out.println("rows=" + lines.length + " correct=" + correct);
    }
  }
}

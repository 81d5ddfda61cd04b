package dev.inferbridge.examples;

import dev.inferbridge.Inference;
import dev.inferbridge.LocalRun;
import dev.inferbridge.PytorchModel;
import dev.inferbridge.Step;
import java.util.Collections;
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
 * data directory ({@code --trusted-model-root}). With {@code --stateDict} it loads the same
 * network's weights into {@code digits_net:DigitsNet}, a class the service imports: run it under
 * {@code inferbridge-local --python-path=examples/digits --allow-model-class=digits_net}.
 */
public final class PytorchDigits {
  private PytorchDigits() {}

  /** Options: the examples' own, plus which form of the network to load. */
  public interface Options extends ExampleOptions {
    @org.apache.beam.sdk.options.Description(
        "Load the network's state_dict into digits_net:DigitsNet (the service needs examples/digits on its "
            + "import path) instead of its TorchScript form")
    @org.apache.beam.sdk.options.Default.Boolean(false)
    boolean getStateDict();

    void setStateDict(boolean value);
  }

  public static void main(String[] args) throws Exception {
    Options options = ExampleOptions.parse(args, Options.class);
    PytorchModel model =
        options.getStateDict()
            ? PytorchModel.stateDict(ExampleIo.data(options, "digits_state.pt").toString(), "digits_net:DigitsNet")
                .withParams(Collections.singletonMap("hidden", 32))
            : PytorchModel.torchScript(ExampleIo.data(options, "digits.ts").toString());
    try (LocalRun local = LocalRun.start(options)) {
      Pipeline pipeline = Pipeline.create(options);
      ExampleIo.writeLines(
          ExampleIo.digits(pipeline, options)
              .apply(
                  "Classify",
                  Inference.of(model)
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

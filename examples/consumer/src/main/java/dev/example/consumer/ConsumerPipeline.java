package dev.example.consumer;

import dev.inferbridge.Inference;
import dev.inferbridge.InferenceResult;
import dev.inferbridge.LocalRun;
import dev.inferbridge.ModelOutput;
import dev.inferbridge.SklearnModel;
import dev.inferbridge.Step;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.PipelineResult;
import org.apache.beam.sdk.io.TextIO;
import org.apache.beam.sdk.options.Description;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.options.Validation;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.transforms.Count;
import org.apache.beam.sdk.transforms.Create;
import org.apache.beam.sdk.transforms.Flatten;
import org.apache.beam.sdk.transforms.MapElements;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.PCollectionList;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TypeDescriptors;

/**
 * A pipeline of a project that depends on {@code dev.inferbridge:inferbridge-java} and nothing
 * else of InferBridge: it classifies handwritten digits with a scikit-learn model served by the
 * InferBridge expansion service.
 *
 * <p>Reads the rows of a CSV file with a header, an integer {@code id} column and 64 pixel columns
 * {@code pixel_0..pixel_63} (values 0..16; other columns are ignored), as written by
 * {@code examples/digits/train_model.py} in {@code test_rows.csv}. Each row becomes a Row
 * {@code {id: INT64, pixels: ARRAY<DOUBLE>}}; {@link Inference} scales the pixels by 1/16, asks the
 * pickled model for {@code predict_proba} and keeps the {@code argmax}. Writes to {@code --output}
 * one {@code <id>,<predicted digit>} line per row that got an inference and one {@code
 * failures=<count>} line (in no particular order).
 *
 * <pre>
 * inferbridge-local --trusted-model-root=MODEL_DIR -- \
 *     mvn -q compile exec:java -Dexec.args="--model=MODEL_DIR/digits.pkl --input=ROWS.csv --output=OUT.txt"
 * </pre>
 */
public final class ConsumerPipeline {

  /** The options of this pipeline. */
  public interface Options extends PipelineOptions {
    @Description("The pickled scikit-learn classifier (inside a trusted model root of the service)")
    @Validation.Required
    String getModel();

    void setModel(String value);

    @Description("CSV file with a header: an integer 'id' column and pixel_0..pixel_63")
    @Validation.Required
    String getInput();

    void setInput(String value);

    @Description("File to write: one 'id,prediction' line per inference and a 'failures=N' line")
    @Validation.Required
    String getOutput();

    void setOutput(String value);
  }

  static final Schema DIGIT = Schema.builder().addInt64Field("id").addArrayField("pixels", FieldType.DOUBLE).build();

  private ConsumerPipeline() {}

  public static void main(String[] args) throws Exception {
    Options options = PipelineOptionsFactory.fromArgs(LocalRun.withDefaults(args)).withValidation().as(Options.class);
    try (LocalRun local = LocalRun.start(options)) { // before Pipeline.create
      Pipeline pipeline = Pipeline.create(options);
      PCollection<Row> digits = pipeline.apply("Digits", Create.of(readRows(options.getInput())).withRowSchema(DIGIT));

      InferenceResult result =
          digits.apply(
              "Classify",
              Inference.of(SklearnModel.pickle(options.getModel()).withOutput(ModelOutput.PREDICT_PROBA))
                  .withKeyField("id")
                  .withFeatureField("pixels")
                  .withPreprocess(Step.scale(1.0 / 16))
                  .withPostprocess(Step.argmax()));

      PCollection<String> predictions =
          result
              .getInferences()
              .apply(
                  "FormatPredictions",
                  MapElements.into(TypeDescriptors.strings())
                      .via((Row r) -> r.getInt64("key") + "," + r.getInt64("inference")));
      PCollection<String> failureCount =
          result
              .getFailures()
              .apply("CountFailures", Count.globally())
              .apply("FormatFailures", MapElements.into(TypeDescriptors.strings()).via((Long n) -> "failures=" + n));
      PCollectionList.of(predictions)
          .and(failureCount)
          .apply("Lines", Flatten.pCollections())
          .apply("Write", TextIO.write().to(options.getOutput()).withoutSharding());

      PipelineResult.State state = pipeline.run().waitUntilFinish();
      if (state != PipelineResult.State.DONE) {
        throw new IllegalStateException("the pipeline ended in state " + state);
      }
    }
    System.out.println("wrote " + options.getOutput());
  }

  /** The rows of the CSV file as {@link #DIGIT} Rows. */
  static List<Row> readRows(String csv) throws IOException {
    List<String> lines = Files.readAllLines(Paths.get(csv), StandardCharsets.UTF_8);
    String[] header = lines.get(0).split(",", -1);
    int id = -1;
    List<Integer> pixelColumns = new ArrayList<>();
    for (int i = 0; i < header.length; i++) {
      if (header[i].equals("id")) {
        id = i;
      } else if (header[i].startsWith("pixel_")) {
        pixelColumns.add(i);
      }
    }
    if (id < 0 || pixelColumns.isEmpty()) {
      throw new IllegalArgumentException(csv + ": the header needs an 'id' column and pixel_* columns");
    }
    List<Row> rows = new ArrayList<>();
    for (String line : lines.subList(1, lines.size())) {
      if (line.isEmpty()) {
        continue;
      }
      String[] cells = line.split(",", -1);
      List<Double> pixels = new ArrayList<>();
      for (int column : pixelColumns) {
        pixels.add(Double.parseDouble(cells[column]));
      }
      // attachValues: the values are of the schema's types already; addValues(...).build() would
      // copy and check every row's pixels again.
      rows.add(Row.withSchema(DIGIT).attachValues(Long.parseLong(cells[id]), pixels));
    }
    return rows;
  }
}

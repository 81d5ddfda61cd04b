package dev.inferbridge.examples;

import dev.inferbridge.Evaluate;
import dev.inferbridge.Inference;
import dev.inferbridge.LocalRun;
import dev.inferbridge.ModelOutput;
import dev.inferbridge.SklearnModel;
import dev.inferbridge.Step;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.transforms.Flatten;
import org.apache.beam.sdk.transforms.MapElements;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.PCollectionList;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TypeDescriptors;

/**
 * A/B: two models on the same input, compared inside the pipeline by {@link Evaluate}.
 *
 * <p>Model "a" is the logistic regression of {@code train_model.py}, model "b" the decision tree
 * of {@code train_examples.py}. Every held-out digit goes through both; the predictions are
 * flattened and evaluated per model id. Prints one {@code model=<id> accuracy=<a> rows=<n>} line
 * per model (sorted).
 *
 * <pre>
 * inferbridge-local --trusted-model-root=DIR -- java -cp ... dev.inferbridge.examples.AbComparison \
 *     --dataDir=DIR --outputDir=OUT
 * </pre>
 */
public final class AbComparison {
  private AbComparison() {}

  public static void main(String[] args) throws Exception {
    ExampleOptions options = ExampleOptions.parse(args);
    try (LocalRun local = LocalRun.start(options)) {
      Pipeline pipeline = Pipeline.create(options);
      PCollection<Row> digits = ExampleIo.digits(pipeline, options);
      PCollection<Row> a = digits.apply("ModelA", classify(SklearnModel.pickle(ExampleIo.data(options, "digits.pkl").toString()), "a")).getInferences();
      PCollection<Row> b = digits.apply("ModelB", classify(SklearnModel.pickle(ExampleIo.data(options, "digits_b.pkl").toString()), "b")).getInferences();
      PCollection<Row> evaluation = PCollectionList.of(a).and(b).apply(Flatten.pCollections()).apply(Evaluate.of("label"));
      ExampleIo.writeLines(
          evaluation.apply(
              "Report",
              MapElements.into(TypeDescriptors.strings())
                  .via((Row e) -> "model=" + e.getString("model_id") + " accuracy=" + e.getDouble("accuracy") + " rows=" + e.getInt64("count"))),
          "Evaluation",
          ExampleIo.output(options, "evaluation.txt").toString());
      ExampleIo.runToCompletion(pipeline);
      System.out.println(ExampleIo.read(ExampleIo.output(options, "evaluation.txt")));
    }
  }

  private static Inference classify(SklearnModel model, String modelId) {
    return Inference.of(model.withOutput(ModelOutput.PREDICT_PROBA).withModelId(modelId))
        .withKeyField("id")
        .withFeatureFields("pixels")
        .withPassthroughFields("label")
        .withPreprocess(Step.scale(1.0 / 16))
        .withPostprocess(Step.argmax());
  }
}

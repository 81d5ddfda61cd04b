package dev.inferbridge.examples;

import dev.inferbridge.LocalRun;
import org.apache.beam.sdk.options.Description;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.options.Validation;

/**
 * Options every example takes: where the trained models are and where results go. The expansion
 * and job services come from {@code $INFERBRIDGE_EXPANSION_SERVICE} and
 * {@code $INFERBRIDGE_JOB_ENDPOINT}, which {@code inferbridge-local} sets.
 */
public interface ExampleOptions extends PipelineOptions {
  @Description("Directory written by examples/digits/train_model.py and train_examples.py")
  @Validation.Required
  String getDataDir();

  void setDataDir(String value);

  @Description("Directory for the example's result files (created if missing)")
  @Validation.Required
  String getOutputDir();

  void setOutputDir(String value);

  /** Parses and validates {@code args}, with the local run's runner and job service. */
  static ExampleOptions parse(String[] args) {
    return parse(args, ExampleOptions.class);
  }

  /** {@link #parse(String[])} as {@code type}, an example's own options. */
  static <T extends ExampleOptions> T parse(String[] args, Class<T> type) {
    return PipelineOptionsFactory.fromArgs(LocalRun.withDefaults(args)).withValidation().as(type);
  }
}

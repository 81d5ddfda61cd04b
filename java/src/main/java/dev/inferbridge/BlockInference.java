package dev.inferbridge;

import org.apache.beam.sdk.transforms.PTransform;
import org.apache.beam.sdk.values.PCollection;

/**
 * {@link Inference} on {@link FeatureBlock}s: made by {@link Inference#overBlocks}, with that
 * inference's models, steps and settings. Output: {@link InferenceResult}, whose inference Rows
 * are {@code key} (INT64 or STRING, as the blocks' keys), {@code inference} and {@code
 * model_id}, one per served row; every other row is a failure Row.
 */
public final class BlockInference extends PTransform<PCollection<FeatureBlock>, InferenceResult> {
  private static final long serialVersionUID = 1L;

  private final Inference inference;
  private final FeatureBlock.KeyType keyType;

  BlockInference(Inference inference, FeatureBlock.KeyType keyType) {
    this.inference = inference;
    this.keyType = keyType;
  }

  /** The type of the keys this transform takes. */
  public FeatureBlock.KeyType keyType() {
    return keyType;
  }

  @Override
  public InferenceResult expand(PCollection<FeatureBlock> input) {
    return inference.expandFeatureBlocks(input, keyType);
  }
}

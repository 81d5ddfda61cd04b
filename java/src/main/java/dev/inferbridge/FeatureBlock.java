package dev.inferbridge;

import java.io.Serializable;
import java.util.Arrays;
import org.apache.beam.sdk.coders.DefaultCoder;
import org.apache.beam.sdk.coders.SerializableCoder;

/**
 * Many rows at once, as arrays, for {@link Inference#overBlocks}: one key per row ({@code long}
 * or {@link String}) and the features of every row in one {@code double[]}, row-major ({@code
 * size() * featureCount()} values). Made from the columns a reader already holds (Parquet, Arrow,
 * arrays), a block costs no per-row work in Java.
 *
 * <pre>{@code
 * FeatureBlock block = FeatureBlock.of(new long[] {7, 8}, new double[] {0.1, 0.2, 0.3, 0.4}, 2);
 * }</pre>
 *
 * <p>The block keeps the arrays it is given (no copy): like any element of a Beam pipeline, do not
 * change them after the block is output. A row that a step or the model cannot take (say, a NaN
 * feature for a model that refuses NaN) becomes a failure Row alone; the block's other rows are
 * served.
 */
@DefaultCoder(SerializableCoder.class)
public final class FeatureBlock implements Serializable {
  private static final long serialVersionUID = 1L;

  /** The type of a block's keys, fixed per {@link Inference#overBlocks} transform. */
  public enum KeyType {
    INT64,
    STRING
  }

  private final long[] longKeys;
  private final String[] stringKeys;
  private final double[] features;
  private final int featureCount;

  private FeatureBlock(long[] longKeys, String[] stringKeys, double[] features, int featureCount) {
    this.longKeys = longKeys;
    this.stringKeys = stringKeys;
    this.features = features;
    this.featureCount = featureCount;
  }

  /** A block of rows with integer keys; {@code features} holds {@code keys.length * featureCount} values, row-major. */
  public static FeatureBlock of(long[] keys, double[] features, int featureCount) {
    if (keys == null) {
      throw new IllegalArgumentException("FeatureBlock.of(): keys must not be null");
    }
    check(keys.length, features, featureCount);
    return new FeatureBlock(keys, null, features, featureCount);
  }

  /** A block of rows with string keys (none null); {@code features} as in {@link #of(long[], double[], int)}. */
  public static FeatureBlock of(String[] keys, double[] features, int featureCount) {
    if (keys == null) {
      throw new IllegalArgumentException("FeatureBlock.of(): keys must not be null");
    }
    for (int i = 0; i < keys.length; i++) {
      if (keys[i] == null) {
        throw new IllegalArgumentException("FeatureBlock.of(): keys[" + i + "] is null; every row needs a key");
      }
    }
    check(keys.length, features, featureCount);
    return new FeatureBlock(null, keys, features, featureCount);
  }

  private static void check(int rows, double[] features, int featureCount) {
    if (rows < 1 || rows > Blocks.MAX_ROWS_PER_BLOCK) {
      throw new IllegalArgumentException(
          "FeatureBlock.of(): " + rows + " keys; a block holds 1 to " + Blocks.MAX_ROWS_PER_BLOCK + " rows");
    }
    if (features == null) {
      throw new IllegalArgumentException("FeatureBlock.of(): features must not be null");
    }
    if (featureCount < 1) {
      throw new IllegalArgumentException(
          "FeatureBlock.of(): featureCount is " + featureCount + "; allowed: at least 1 feature per row");
    }
    if ((long) rows * featureCount != features.length) {
      throw new IllegalArgumentException(
          "FeatureBlock.of(): " + features.length + " features for " + rows + " rows of " + featureCount
              + " features; expected " + ((long) rows * featureCount) + " (row-major, one row after another)");
    }
    if ((long) features.length * 8 > PackBlocks.MAX_BLOCK_BYTES) {
      throw new IllegalArgumentException(
          "FeatureBlock.of(): " + features.length + " features; a block holds at most "
              + (PackBlocks.MAX_BLOCK_BYTES / 8) + "; split it into smaller blocks");
    }
  }

  /** The number of rows. */
  public int size() {
    return longKeys != null ? longKeys.length : stringKeys.length;
  }

  /** The number of features of each row. */
  public int featureCount() {
    return featureCount;
  }

  /** The type of this block's keys. */
  public KeyType keyType() {
    return longKeys != null ? KeyType.INT64 : KeyType.STRING;
  }

  /** Row {@code i}'s key: a {@link Long} or a {@link String}. */
  public Object key(int i) {
    return longKeys != null ? (Object) longKeys[i] : stringKeys[i];
  }

  /** Row {@code i}'s features (a copy). */
  public double[] features(int i) {
    return Arrays.copyOfRange(features, i * featureCount, (i + 1) * featureCount);
  }

  long[] longKeys() {
    return longKeys;
  }

  String[] stringKeys() {
    return stringKeys;
  }

  double[] allFeatures() {
    return features;
  }

  @Override
  public boolean equals(Object other) {
    if (!(other instanceof FeatureBlock)) {
      return false;
    }
    FeatureBlock that = (FeatureBlock) other;
    return featureCount == that.featureCount
        && Arrays.equals(longKeys, that.longKeys)
        && Arrays.equals(stringKeys, that.stringKeys)
        && Arrays.equals(features, that.features);
  }

  @Override
  public int hashCode() {
    return 31 * (31 * Arrays.hashCode(longKeys) + Arrays.hashCode(stringKeys)) + Arrays.hashCode(features);
  }

  @Override
  public String toString() {
    return "FeatureBlock(" + size() + " rows of " + featureCount + " features, " + keyType() + " keys)";
  }
}

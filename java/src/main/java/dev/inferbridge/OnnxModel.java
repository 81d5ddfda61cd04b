package dev.inferbridge;

import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * An ONNX model, run with onnxruntime.
 *
 * <p>The features are fed to the model's first input. {@link #withOutput} says what the result
 * is per example: {@link ModelOutput#VECTOR} (the default; the model's last output unless {@link
 * #withOutputName} picks one, e.g. a converted classifier's probabilities) or {@link
 * ModelOutput#NUMBER} (the first output unless named).
 *
 * <pre>{@code
 * OnnxModel model = OnnxModel.of("/models/digits.onnx")
 *     .withOutputName("probabilities")
 *     .withDevice(Device.CUDA);
 * rows.apply(Inference.of(model).withKeyField("id").withFeatureField("pixels")
 *     .withPostprocess(Step.topK(3)));
 * }</pre>
 */
public final class OnnxModel extends Model {
  private static final long serialVersionUID = 1L;
  static final String FRAMEWORK = "onnx";
  private static final List<ModelOutput> OUTPUTS =
      Collections.unmodifiableList(Arrays.asList(ModelOutput.VECTOR, ModelOutput.NUMBER));

  private final String outputName;
  private final Device device;

  private OnnxModel(Settings settings, String outputName, Device device) {
    super(FRAMEWORK, "onnx", settings);
    this.outputName = outputName;
    this.device = device;
  }

  /** The ONNX model file at {@code uri}. */
  public static OnnxModel of(String uri) {
    return new OnnxModel(Settings.of("OnnxModel.of()", uri, ModelOutput.VECTOR), null, null);
  }

  /** The name of the model output that gives the result. */
  public OnnxModel withOutputName(String outputName) {
    if (outputName == null || outputName.isEmpty()) {
      throw new IllegalArgumentException(
          "OnnxModel.withOutputName(): outputName must be a non-empty string, got " + quote(outputName));
    }
    return new OnnxModel(settings(), outputName, device);
  }

  /**
   * Where the model runs: {@link Device#CPU} (the default) or {@link Device#CUDA} (CUDA first,
   * then the CPU; needs onnxruntime-gpu on the workers).
   */
  public OnnxModel withDevice(Device device) {
    if (device == null) {
      throw new IllegalArgumentException(
          "OnnxModel.withDevice(): device must not be null; allowed: " + names(Arrays.asList(Device.values())));
    }
    return new OnnxModel(settings(), outputName, device);
  }

  /** {@link ModelOutput#VECTOR} (default) or {@link ModelOutput#NUMBER}. */
  @Override
  public OnnxModel withOutput(ModelOutput output) {
    return (OnnxModel) super.withOutput(output);
  }

  @Override
  public OnnxModel withModelId(String modelId) {
    return (OnnxModel) super.withModelId(modelId);
  }

  @Override
  public OnnxModel withKeys(String... keys) {
    return (OnnxModel) super.withKeys(keys);
  }

  @Override
  public OnnxModel withSha256(String sha256) {
    return (OnnxModel) super.withSha256(sha256);
  }

  @Override
  public OnnxModel withWatchPattern(String pattern) {
    return (OnnxModel) super.withWatchPattern(pattern);
  }

  /** The named model output, or null for the default. */
  public String getOutputName() {
    return outputName;
  }

  /** The device, or null when not set (the CPU). */
  public Device getDevice() {
    return device;
  }

  @Override
  OnnxModel withSettings(Settings settings) {
    return new OnnxModel(settings, outputName, device);
  }

  @Override
  List<ModelOutput> allowedOutputs() {
    return OUTPUTS;
  }

  @Override
  Map<String, Object> options() {
    Map<String, Object> options = new TreeMap<>();
    if (device != null) {
      options.put("device", device.wireName());
    }
    if (outputName != null) {
      options.put("output_name", outputName);
    }
    return options;
  }

  @Override
  String frameworkName() {
    return "ONNX";
  }
}

package dev.inferbridge;

import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.regex.Pattern;

/**
 * A PyTorch model: a {@code state_dict} loaded into a {@code torch.nn.Module} class, or a
 * TorchScript file.
 *
 * <p>The input features become a float32 tensor on the device. {@link #withOutput} says what the
 * model gives per example: {@link ModelOutput#VECTOR} (the default) or {@link ModelOutput#NUMBER}.
 *
 * <pre>{@code
 * PytorchModel net = PytorchModel.stateDict("/models/net.pt", "my_models.nets:DigitNet")
 *     .withParams(Collections.singletonMap("hidden", 32))
 *     .withDevice(Device.CUDA);
 * rows.apply(Inference.of(net).withKeyField("id").withFeatureField("pixels")
 *     .withPostprocess(Step.softmax(), Step.argmax()));
 * }</pre>
 *
 * <p>The model class must be importable by the Python workers and allowed by the expansion
 * service ({@code --allow-model-class}); state dicts load with {@code weights_only=True}.
 * TorchScript files run code when loaded, so they load only from trusted model roots.
 */
public final class PytorchModel extends Model {
  private static final long serialVersionUID = 1L;
  static final String FRAMEWORK = "pytorch";
  static final String STATE_DICT = "state_dict";
  static final String TORCHSCRIPT = "torchscript";
  private static final List<ModelOutput> OUTPUTS =
      Collections.unmodifiableList(Arrays.asList(ModelOutput.VECTOR, ModelOutput.NUMBER));
  private static final String IDENTIFIER = "[\\p{L}_][\\p{L}\\p{N}_]*";
  private static final Pattern CLASS_PATH =
      Pattern.compile(IDENTIFIER + "(\\." + IDENTIFIER + ")*:" + IDENTIFIER + "(\\." + IDENTIFIER + ")*");

  private final String modelClass;
  private final Map<String, Object> params;
  private final Device device;

  private PytorchModel(
      String format, Settings settings, String modelClass, Map<String, Object> params, Device device) {
    super(FRAMEWORK, format, settings);
    this.modelClass = modelClass;
    this.params = params;
    this.device = device;
  }

  /**
   * A state dict saved with {@code torch.save(model.state_dict(), uri)}, loaded into {@code
   * modelClass}, given as {@code "package.module:Class"}.
   */
  public static PytorchModel stateDict(String uri, String modelClass) {
    Settings settings = Settings.of("PytorchModel.stateDict()", uri, ModelOutput.VECTOR);
    if (modelClass == null || !CLASS_PATH.matcher(modelClass).matches()) {
      throw new IllegalArgumentException(
          "PytorchModel.stateDict(): modelClass " + quote(modelClass) + " is not a class path; "
              + "allowed: \"package.module:Class\"");
    }
    return new PytorchModel(STATE_DICT, settings, modelClass, Collections.<String, Object>emptyMap(), Device.CPU);
  }

  /** A TorchScript model saved with {@code torch.jit.save}. */
  public static PytorchModel torchScript(String uri) {
    Settings settings = Settings.of("PytorchModel.torchScript()", uri, ModelOutput.VECTOR);
    return new PytorchModel(TORCHSCRIPT, settings, null, Collections.<String, Object>emptyMap(), Device.CPU);
  }

  /**
   * Keyword arguments for the model class's constructor (JSON values: strings, numbers, booleans,
   * null, lists and maps). Only for {@link #stateDict} models; replaces earlier parameters.
   */
  public PytorchModel withParams(Map<String, ?> params) {
    if (modelClass == null) {
      throw new IllegalArgumentException(
          "PytorchModel.withParams(): a TorchScript model takes no constructor parameters; "
              + "withParams() is for PytorchModel.stateDict(uri, modelClass)");
    }
    return new PytorchModel(
        getFormat(), settings(), modelClass, Json.object("PytorchModel.withParams(): params", params), device);
  }

  /** Where the model runs: {@link Device#CPU} (default) or {@link Device#CUDA}. */
  public PytorchModel withDevice(Device device) {
    if (device == null) {
      throw new IllegalArgumentException(
          "PytorchModel.withDevice(): device must not be null; allowed: " + names(Arrays.asList(Device.values())));
    }
    return new PytorchModel(getFormat(), settings(), modelClass, params, device);
  }

  /** {@link ModelOutput#VECTOR} (default) or {@link ModelOutput#NUMBER}. */
  @Override
  public PytorchModel withOutput(ModelOutput output) {
    return (PytorchModel) super.withOutput(output);
  }

  @Override
  public PytorchModel withModelId(String modelId) {
    return (PytorchModel) super.withModelId(modelId);
  }

  @Override
  public PytorchModel withKeys(String... keys) {
    return (PytorchModel) super.withKeys(keys);
  }

  @Override
  public PytorchModel withSha256(String sha256) {
    return (PytorchModel) super.withSha256(sha256);
  }

  @Override
  public PytorchModel withWatchPattern(String pattern) {
    return (PytorchModel) super.withWatchPattern(pattern);
  }

  /** The model class of a state dict, or null for TorchScript. */
  public String getModelClass() {
    return modelClass;
  }

  /** The model class's constructor parameters (empty for none). */
  public Map<String, Object> getParams() {
    return params;
  }

  /** Where the model runs. */
  public Device getDevice() {
    return device;
  }

  @Override
  PytorchModel withSettings(Settings settings) {
    return new PytorchModel(getFormat(), settings, modelClass, params, device);
  }

  @Override
  List<ModelOutput> allowedOutputs() {
    return OUTPUTS;
  }

  @Override
  Map<String, Object> options() {
    Map<String, Object> options = new TreeMap<>();
    options.put("device", device.wireName());
    if (modelClass != null) {
      options.put("model_class", modelClass);
      options.put("model_params", params);
    }
    return options;
  }

  @Override
  String frameworkName() {
    return "PyTorch";
  }
}

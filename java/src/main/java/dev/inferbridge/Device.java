package dev.inferbridge;

/**
 * Where a PyTorch or ONNX model runs. With {@link #CUDA} on a worker without CUDA, the model is
 * loaded on the CPU and a warning is logged.
 *
 * <pre>{@code
 * PytorchModel.torchScript("/models/net.pt").withDevice(Device.CUDA)
 * }</pre>
 */
public enum Device {
  /** The CPU. */
  CPU("cpu"),
  /** An NVIDIA GPU through CUDA. */
  CUDA("cuda");

  private final String wireName;

  Device(String wireName) {
    this.wireName = wireName;
  }

  /** The name the model options use. */
  public String wireName() {
    return wireName;
  }
}

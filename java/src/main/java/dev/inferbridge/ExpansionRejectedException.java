package dev.inferbridge;

/**
 * The InferBridge expansion service refused a transform's configuration when the pipeline was
 * built. The message is one line that names the transform, the service and the Python
 * exception (which names the configuration field, the bad value and what is allowed); the
 * service's whole response (the Python traceback) is {@link #getServiceTraceback()}, and the
 * cause is the expansion call's own error.
 */
public final class ExpansionRejectedException extends IllegalArgumentException {
  private static final long serialVersionUID = 1L;
  private static final String TRACEBACK_START = "Traceback (most recent call last):";

  private final String serviceTraceback;

  ExpansionRejectedException(String transform, String endpoint, String response, Throwable cause) {
    super(transform + ": the expansion service at " + endpoint + " rejected the configuration: " + exceptionOf(response), cause);
    this.serviceTraceback = response;
  }

  /** The service's whole response: the Python traceback of the error, or its refusal. */
  public String getServiceTraceback() {
    return serviceTraceback;
  }

  /**
   * The exception a Python traceback ends with ({@code ValueError: ...}, every line of its
   * message), or the whole response when it is not a traceback.
   */
  static String exceptionOf(String response) {
    int last = response.lastIndexOf(TRACEBACK_START);
    if (last < 0) {
      return response.trim();
    }
    String[] lines = response.substring(last + TRACEBACK_START.length()).split("\n", -1);
    int first = 0;
    while (first < lines.length && (lines[first].isEmpty() || Character.isWhitespace(lines[first].charAt(0)))) {
      first++; // frames and their source lines are indented
    }
    StringBuilder exception = new StringBuilder();
    for (int i = first; i < lines.length; i++) {
      exception.append(i > first ? "\n" : "").append(lines[i]);
    }
    String text = exception.toString().trim();
    return text.isEmpty() ? response.trim() : text;
  }
}

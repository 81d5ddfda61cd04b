package dev.inferbridge;

/** Turns failures of the expansion call into errors that say what to fix. */
final class ExpansionErrors {
  private static final String SERVICE_ERROR_PREFIX = "expansion service error:";

  private ExpansionErrors() {}

  static RuntimeException explain(String endpoint, RuntimeException error) {
    return explain("Inference", endpoint, error);
  }

  /** {@code error} of {@code transform}'s expansion, explained. */
  static RuntimeException explain(String transform, String endpoint, RuntimeException error) {
    for (Throwable t = error; t != null; t = t.getCause()) {
      String message = String.valueOf(t.getMessage());
      if (t.getClass().getSimpleName().equals("StatusRuntimeException")
          && message.startsWith("UNAVAILABLE")) {
        return new IllegalStateException(
            transform + ": the InferBridge expansion service at " + endpoint + " is not reachable ("
                + message + "). Start it with `inferbridge-expansion-service --port "
                + endpoint.substring(endpoint.lastIndexOf(':') + 1)
                + "`, or run the pipeline under `inferbridge-local -- <command>`, and pass its "
                + "address to withExpansionService(); or let this JVM start one with "
                + "withLocalExpansionService(PythonEnvironment.virtualenv(\"/path/to/venv\"))",
            error);
      }
    }
    String message = String.valueOf(error.getMessage());
    int prefix = message.indexOf(SERVICE_ERROR_PREFIX);
    if (prefix < 0) {
      return error;
    }
    String detail = message.substring(prefix + SERVICE_ERROR_PREFIX.length()).trim();
    return new IllegalArgumentException(
        transform + ": the expansion service at " + endpoint + " rejected the configuration: "
            + lastLine(detail) + "\n\nExpansion service response:\n" + detail,
        error);
  }

  /** The last non-blank line of a Python traceback: the exception and its message. */
  private static String lastLine(String traceback) {
    String[] lines = traceback.split("\n");
    for (int i = lines.length - 1; i >= 0; i--) {
      if (!lines[i].trim().isEmpty()) {
        return lines[i].trim();
      }
    }
    return traceback;
  }
}

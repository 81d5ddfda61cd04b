package dev.inferbridge;

/** Where the InferBridge expansion service is: the configured address, else the environment. */
final class ExpansionService {
  private ExpansionService() {}

  /** {@code configured}, else {@value Inference#EXPANSION_SERVICE_ENV}; {@code transform} names the caller in errors. */
  static String resolve(String transform, String configured) {
    if (configured != null) {
      return configured;
    }
    String fromEnv = System.getenv(Inference.EXPANSION_SERVICE_ENV);
    if (fromEnv == null || fromEnv.trim().isEmpty()) {
      throw new IllegalStateException(
          transform + ": withExpansionService() is required (or set " + Inference.EXPANSION_SERVICE_ENV
              + "); start a service with `inferbridge-expansion-service --port 8097`, or run the "
              + "pipeline under `inferbridge-local -- <command>`");
    }
    return fromEnv.trim();
  }
}

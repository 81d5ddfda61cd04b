package dev.inferbridge;

/** Turns failures of the expansion call into errors that say what to fix. */
final class ExpansionErrors {
  private static final String SERVICE_ERROR_PREFIX = "expansion service error:";

  private static final String GIVE_TOKEN =
      "withServiceCredentials(ServiceCredentials.token(token)) or withServiceCredentials("
          + "ServiceCredentials.tokenFromFile(\"/path/to/token\")), or set $" + ServiceCredentials.AUTH_TOKEN_ENV
          + " or $" + ServiceCredentials.AUTH_TOKEN_FILE_ENV;

  private static final String GIVE_TLS =
      "withServiceCredentials(ServiceCredentials.tls(\"/path/to/ca.pem\")) or $" + ServiceCredentials.TLS_CA_FILE_ENV;

  private ExpansionErrors() {}

  /** {@code error} of {@code transform}'s expansion with {@code credentials}, explained. */
  static RuntimeException explain(
      String transform, String endpoint, ServiceCredentials credentials, RuntimeException error) {
    for (Throwable t = error; t != null; t = t.getCause()) {
      String message = String.valueOf(t.getMessage());
      if (t.getClass().getSimpleName().equals("StatusRuntimeException")) {
        RuntimeException explained = explainStatus(transform, endpoint, credentials, t, message, error);
        if (explained != null) {
          return explained;
        }
      }
    }
    String message = String.valueOf(error.getMessage());
    int prefix = message.indexOf(SERVICE_ERROR_PREFIX);
    if (prefix < 0) {
      return error;
    }
    return new ExpansionRejectedException(
        transform, endpoint, message.substring(prefix + SERVICE_ERROR_PREFIX.length()).trim(), error);
  }

  private static RuntimeException explainStatus(
      String transform, String endpoint, ServiceCredentials credentials, Throwable status, String message,
      RuntimeException error) {
    String service = "the InferBridge expansion service at " + endpoint;
    if (message.startsWith("UNAUTHENTICATED") || message.startsWith("PERMISSION_DENIED")) {
      String origin = credentials.tokenOrigin();
      if (origin == null) {
        return new IllegalStateException(
            transform + ": " + service + " requires a bearer token, and none was sent (" + message + "). Give "
                + "the token the service was started with ($" + ServiceCredentials.AUTH_TOKEN_ENV
                + " or --auth-token-file) with " + GIVE_TOKEN,
            error);
      }
      return new IllegalStateException(
          transform + ": " + service + " rejected the bearer token given by " + origin + " (" + message
              + "). Give the token the service was started with ($" + ServiceCredentials.AUTH_TOKEN_ENV
              + " or --auth-token-file) with " + GIVE_TOKEN,
          error);
    }
    if (!message.startsWith("UNAVAILABLE")) {
      return null;
    }
    Throwable tlsFailure = tlsFailure(status);
    if (credentials.usesTls() && tlsFailure != null) {
      if (tlsFailure.getClass().getSimpleName().equals("NotSslRecordException")) {
        return new IllegalStateException(
            transform + ": " + service + " does not answer TLS (" + ServiceCredentials.describe(tlsFailure)
                + "): it runs without TLS, or another service listens there. Start it with --tls-cert-file and "
                + "--tls-key-file, or leave TLS out of the credentials (given by " + credentials.tlsOrigin() + ")",
            error);
      }
      String trusted = credentials.getTrustedCertificate() != null
          ? "the certificate file " + credentials.getTrustedCertificate()
          : "the JVM's default trust store";
      return new IllegalStateException(
          transform + ": the TLS handshake with " + service + " failed (" + describeTls(tlsFailure)
              + "). TLS trusts " + trusted + " (given by " + credentials.tlsOrigin() + "): the service's "
              + "certificate (its --tls-cert-file) must be that certificate or be signed by it, and name the host "
              + host(endpoint) + " in its subjectAltName"
              + (credentials.getClientCertificate() != null
                  ? "; and the service must accept the client certificate " + credentials.getClientCertificate()
                  : "; if the service requires client certificates (--tls-client-ca-file), give one with "
                      + "ServiceCredentials.withClientCertificate(certPem, keyPem)"),
          error);
    }
    if (message.contains("Network closed")) {
      // A service that accepts the connection and closes it: TLS settings that do not match its own.
      String fix = !credentials.usesTls()
          ? "if the service uses TLS (--tls-cert-file), trust its certificate with " + GIVE_TLS
          : "TLS is on (given by " + credentials.tlsOrigin() + "): if the service runs without TLS, leave it out; "
              + (credentials.getClientCertificate() == null
                  ? "if the service requires client certificates (--tls-client-ca-file), give one with "
                      + "ServiceCredentials.withClientCertificate(certPem, keyPem)"
                  : "if the service requires client certificates (--tls-client-ca-file), it must accept "
                      + credentials.getClientCertificate());
      return new IllegalStateException(
          transform + ": " + service + " closed the connection (" + message + "); " + fix, error);
    }
    return new IllegalStateException(
        transform + ": " + service + " is not reachable (" + message + "). Start it with "
            + "`inferbridge-expansion-service --port " + endpoint.substring(endpoint.lastIndexOf(':') + 1)
            + "`, or run the pipeline under `inferbridge-local -- <command>`, and pass its "
            + "address to withExpansionService(); or let this JVM start one with "
            + "withLocalExpansionService(PythonEnvironment.virtualenv(\"/path/to/venv\"))",
        error);
  }

  /** {@code failure} and, when it says something else, its root cause. */
  private static String describeTls(Throwable failure) {
    Throwable root = failure;
    while (root.getCause() != null && root.getCause() != root) {
      root = root.getCause();
    }
    String described = ServiceCredentials.describe(failure);
    return root == failure || String.valueOf(failure.getMessage()).contains(String.valueOf(root.getMessage()))
        ? described
        : described + "; " + ServiceCredentials.describe(root);
  }

  /** The TLS error among the causes of {@code status}, or null. */
  private static Throwable tlsFailure(Throwable status) {
    for (Throwable t = status.getCause(); t != null; t = t.getCause()) {
      if (t instanceof javax.net.ssl.SSLException || t.getClass().getSimpleName().equals("NotSslRecordException")) {
        return t;
      }
    }
    return null;
  }

  private static String host(String endpoint) {
    return endpoint.substring(0, endpoint.lastIndexOf(':'));
  }
}

package dev.inferbridge;

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.security.cert.Certificate;
import java.security.cert.CertificateException;
import java.security.cert.CertificateFactory;
import java.util.Base64;
import java.util.Collection;
import java.util.Objects;
import java.util.function.Function;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * How a transform authenticates to the InferBridge expansion service and checks the service's
 * identity: a bearer token sent with every call ({@code authorization: Bearer <token>} metadata),
 * and TLS trusting a given certificate (or the JVM's default trust store), optionally presenting
 * a client certificate (mutual TLS).
 *
 * <pre>{@code
 * // A service started with: inferbridge-expansion-service --host 0.0.0.0 --port 8097 \
 * //     --tls-cert-file server.pem --tls-key-file server.key --auth-token-file /run/secrets/token
 * ServiceCredentials credentials =
 *     ServiceCredentials.tls("/etc/inferbridge/server.pem")   // the service's certificate, or its CA's
 *         .withTokenFromFile("/run/secrets/token");            // the token the service was given
 * InferenceResult result = rows.apply(
 *     Inference.of(SklearnModel.pickle("/models/digits.pkl"))
 *         .withKeyField("id")
 *         .withFeatureField("pixels")
 *         .withExpansionService("inference.internal:8097")
 *         .withServiceCredentials(credentials));
 * PCollection<Row> quality = result.getInferences().apply(
 *     Evaluate.of("label").withExpansionService("inference.internal:8097").withServiceCredentials(credentials));
 * }</pre>
 *
 * <p>A transform without {@code withServiceCredentials} takes them from the environment ({@link
 * #fromEnvironment()}): the token from the file named by {@value #AUTH_TOKEN_FILE_ENV}, or from
 * {@value #AUTH_TOKEN_ENV}; TLS trusting the certificate file named by {@value #TLS_CA_FILE_ENV}; a
 * client certificate from {@value #TLS_CLIENT_CERT_FILE_ENV} and {@value #TLS_CLIENT_KEY_FILE_ENV}.
 * {@link #none()} turns both off whatever the environment says.
 *
 * <p>A service that this JVM starts ({@code withLocalExpansionService}, {@code $INFERBRIDGE_PYTHON})
 * inherits this JVM's environment, so it requires the token of {@value #AUTH_TOKEN_ENV} or {@value
 * #AUTH_TOKEN_FILE_ENV} when one is set, and serves TLS only when {@code
 * $INFERBRIDGE_TLS_CERT_FILE} (its {@code --tls-cert-file}) is set. Transforms without {@code
 * withServiceCredentials} match it: they send that token, and use TLS only in that case, trusting
 * {@value #TLS_CA_FILE_ENV}, or else the service's certificate itself.
 *
 * <p>Files are checked when given (readable, PEM) and read again when a transform is applied, so a
 * rotated token file is picked up. The token never appears in messages or in {@link #toString()}.
 * Instances are immutable values: every {@code withX} method returns a new one.
 */
public final class ServiceCredentials {
  /** The environment variable holding the bearer token, when no credentials are given. */
  public static final String AUTH_TOKEN_ENV = "INFERBRIDGE_AUTH_TOKEN";

  /** The environment variable naming a file that holds the bearer token. */
  public static final String AUTH_TOKEN_FILE_ENV = "INFERBRIDGE_AUTH_TOKEN_FILE";

  /** The environment variable naming a PEM file of the certificates to trust; turns TLS on. */
  public static final String TLS_CA_FILE_ENV = "INFERBRIDGE_TLS_CA_FILE";

  /** The environment variable naming the PEM certificate (chain) of the client, for mutual TLS. */
  public static final String TLS_CLIENT_CERT_FILE_ENV = "INFERBRIDGE_TLS_CLIENT_CERT_FILE";

  /** The environment variable naming the client's PEM private key (PKCS#8), for mutual TLS. */
  public static final String TLS_CLIENT_KEY_FILE_ENV = "INFERBRIDGE_TLS_CLIENT_KEY_FILE";

  /**
   * The service's own certificate file ({@code --tls-cert-file}); a service this JVM starts
   * inherits it from this JVM's environment and then serves TLS.
   */
  static final String SERVICE_TLS_CERT_FILE_ENV = "INFERBRIDGE_TLS_CERT_FILE";

  /** Token files larger than this are refused: they are not token files. */
  static final int MAX_TOKEN_FILE_BYTES = 64 * 1024;

  private static final ServiceCredentials NONE =
      new ServiceCredentials(null, null, null, false, null, null, null, null);

  private static final Pattern PKCS8_KEY =
      Pattern.compile("-----BEGIN PRIVATE KEY-----([A-Za-z0-9+/=\\s]+)-----END PRIVATE KEY-----");

  private final String token;
  private final String tokenFile;
  /** How the token was given, e.g. {@code ServiceCredentials.token()} or {@code $INFERBRIDGE_AUTH_TOKEN}. */
  private final String tokenOrigin;
  private final boolean tls;
  /** Null with TLS: the JVM's default trust store. */
  private final String trustedCertificate;
  /** How the TLS settings were given, for messages. */
  private final String tlsOrigin;
  private final String clientCertificate;
  private final String clientKey;

  private ServiceCredentials(
      String token,
      String tokenFile,
      String tokenOrigin,
      boolean tls,
      String trustedCertificate,
      String tlsOrigin,
      String clientCertificate,
      String clientKey) {
    this.token = token;
    this.tokenFile = tokenFile;
    this.tokenOrigin = tokenOrigin;
    this.tls = tls;
    this.trustedCertificate = trustedCertificate;
    this.tlsOrigin = tlsOrigin;
    this.clientCertificate = clientCertificate;
    this.clientKey = clientKey;
  }

  /** No token and no TLS, whatever the environment says: a plaintext connection. */
  public static ServiceCredentials none() {
    return NONE;
  }

  /** Sends {@code token} as a bearer token with every call, without TLS; see {@link #withToken}. */
  public static ServiceCredentials token(String token) {
    return NONE.tokenAs("ServiceCredentials.token()", token);
  }

  /** Sends the token in the file {@code path} with every call, without TLS; see {@link #withTokenFromFile}. */
  public static ServiceCredentials tokenFromFile(String path) {
    return NONE.tokenFileAs("ServiceCredentials.tokenFromFile(" + Model.quote(path) + ")", path);
  }

  /**
   * TLS trusting the certificates in the PEM file {@code trustedCertificatePem}: the service's own
   * (self-signed) certificate, or the certificate of the authority that signed it. See {@link
   * #withTrustedCertificate}.
   */
  public static ServiceCredentials tls(String trustedCertificatePem) {
    return NONE.trustedCertificateAs(
        "ServiceCredentials.tls(" + Model.quote(trustedCertificatePem) + ")", trustedCertificatePem);
  }

  /** TLS trusting the certificate authorities of the JVM's default trust store. */
  public static ServiceCredentials tls() {
    return new ServiceCredentials(null, null, null, true, null, "ServiceCredentials.tls()", null, null);
  }

  /**
   * The credentials that the environment gives: a token from the file named by {@value
   * #AUTH_TOKEN_FILE_ENV}, else from {@value #AUTH_TOKEN_ENV} (the service's order), TLS trusting the PEM file named by
   * {@value #TLS_CA_FILE_ENV}, and a client certificate and key from {@value
   * #TLS_CLIENT_CERT_FILE_ENV} and {@value #TLS_CLIENT_KEY_FILE_ENV} (both or neither). Empty
   * variables count as unset; with none set, {@link #none()}. Transforms without {@code
   * withServiceCredentials} use these, read when they are applied.
   */
  public static ServiceCredentials fromEnvironment() {
    return fromEnvironment(System::getenv);
  }

  /** {@link #fromEnvironment()} with {@code getenv} as the environment. */
  static ServiceCredentials fromEnvironment(Function<String, String> getenv) {
    String token = getenv.apply(AUTH_TOKEN_ENV);
    String tokenFile = getenv.apply(AUTH_TOKEN_FILE_ENV);
    String ca = getenv.apply(TLS_CA_FILE_ENV);
    String cert = getenv.apply(TLS_CLIENT_CERT_FILE_ENV);
    String key = getenv.apply(TLS_CLIENT_KEY_FILE_ENV);
    ServiceCredentials credentials = NONE;
    // The file first, as the service reads them.
    if (isSet(tokenFile)) {
      credentials = credentials.tokenFileAs("$" + AUTH_TOKEN_FILE_ENV + "=" + tokenFile.trim(), tokenFile.trim());
    } else if (isSet(token)) {
      credentials = credentials.tokenAs("$" + AUTH_TOKEN_ENV, token.trim());
    }
    if (isSet(ca)) {
      credentials = credentials.trustedCertificateAs("$" + TLS_CA_FILE_ENV + "=" + ca.trim(), ca.trim());
    }
    if (isSet(cert) || isSet(key)) {
      if (!isSet(cert) || !isSet(key)) {
        throw new IllegalArgumentException(
            "$" + (isSet(cert) ? TLS_CLIENT_CERT_FILE_ENV : TLS_CLIENT_KEY_FILE_ENV) + " is set without $"
                + (isSet(cert) ? TLS_CLIENT_KEY_FILE_ENV : TLS_CLIENT_CERT_FILE_ENV)
                + "; set both (the client certificate and its private key) or neither");
      }
      credentials = credentials.clientCertificateAs(
          "$" + TLS_CLIENT_CERT_FILE_ENV + "=" + cert.trim() + " and $" + TLS_CLIENT_KEY_FILE_ENV + "=" + key.trim(),
          cert.trim(), key.trim());
    }
    return credentials;
  }

  /**
   * Sends {@code token} with every call as {@code authorization: Bearer <token>}: the token the
   * service was given ({@code $INFERBRIDGE_AUTH_TOKEN} or {@code --auth-token-file}). Replaces a
   * token given before. Without TLS the token crosses the network in the clear; use TLS beyond
   * loopback.
   */
  public ServiceCredentials withToken(String token) {
    return tokenAs("withToken()", token);
  }

  /**
   * Sends the token held in the file {@code path} (surrounding whitespace and line breaks
   * ignored), read now to check it and again when a transform is applied. Replaces a token given
   * before.
   */
  public ServiceCredentials withTokenFromFile(String path) {
    return tokenFileAs("withTokenFromFile(" + Model.quote(path) + ")", path);
  }

  /**
   * Turns TLS on, trusting only the certificates in the PEM file {@code pemPath} (instead of the
   * JVM's default trust store): the service's certificate, or that of the authority that signed
   * it. The service's certificate must name the host of its address (subjectAltName).
   */
  public ServiceCredentials withTrustedCertificate(String pemPath) {
    return trustedCertificateAs("withTrustedCertificate(" + Model.quote(pemPath) + ")", pemPath);
  }

  /**
   * Turns TLS on (trusting the JVM's default trust store unless {@link #withTrustedCertificate}
   * is given) and presents the client certificate (chain) in the PEM file {@code certificatePem},
   * with its unencrypted PKCS#8 PEM private key {@code privateKeyPem} ({@code -----BEGIN PRIVATE
   * KEY-----}), to a service that requires client certificates ({@code --tls-client-ca-file}).
   */
  public ServiceCredentials withClientCertificate(String certificatePem, String privateKeyPem) {
    return clientCertificateAs(
        "withClientCertificate(" + Model.quote(certificatePem) + ", " + Model.quote(privateKeyPem) + ")",
        certificatePem, privateKeyPem);
  }

  private ServiceCredentials tokenAs(String method, String token) {
    checkToken(method, token);
    return new ServiceCredentials(token, null, method, tls, trustedCertificate, tlsOrigin, clientCertificate, clientKey);
  }

  private ServiceCredentials tokenFileAs(String method, String path) {
    readTokenFile(method, requirePath(method, path));
    return new ServiceCredentials(null, path, method, tls, trustedCertificate, tlsOrigin, clientCertificate, clientKey);
  }

  /** These credentials with TLS trusting {@code path}, given by {@code method} (for messages). */
  ServiceCredentials trustingAs(String method, String path) {
    return trustedCertificateAs(method, path);
  }

  private ServiceCredentials trustedCertificateAs(String method, String path) {
    checkCertificates(method, requirePath(method, path));
    return new ServiceCredentials(token, tokenFile, tokenOrigin, true, path, describeTls(method), clientCertificate, clientKey);
  }

  private ServiceCredentials clientCertificateAs(String method, String certificate, String key) {
    checkCertificates(method, requirePath(method, certificate));
    checkPrivateKey(method, requirePath(method, key));
    return new ServiceCredentials(token, tokenFile, tokenOrigin, true, trustedCertificate, describeTls(method), certificate, key);
  }

  private String describeTls(String method) {
    if (tlsOrigin == null || tlsOrigin.equals(method)) {
      return method;
    }
    return tlsOrigin + (method.startsWith("$") ? " and " : ".") + method;
  }

  /** Whether a token is sent. */
  public boolean hasToken() {
    return token != null || tokenFile != null;
  }

  /** The file the token is read from, or null. */
  public String getTokenFile() {
    return tokenFile;
  }

  /** Whether the connection uses TLS. */
  public boolean usesTls() {
    return tls;
  }

  /** The PEM file of the trusted certificates, or null (no TLS, or the JVM's default trust store). */
  public String getTrustedCertificate() {
    return trustedCertificate;
  }

  /** The client certificate's PEM file, or null. */
  public String getClientCertificate() {
    return clientCertificate;
  }

  /** The client certificate's private key file, or null. */
  public String getClientKey() {
    return clientKey;
  }

  /** Neither a token nor TLS. */
  boolean isNone() {
    return !hasToken() && !tls;
  }

  /** These credentials without TLS, for a service this JVM starts. */
  ServiceCredentials withoutTls() {
    return new ServiceCredentials(token, tokenFile, tokenOrigin, false, null, null, null, null);
  }

  /** How the token was given (e.g. {@code $INFERBRIDGE_AUTH_TOKEN}), or null without one; never the token. */
  String tokenOrigin() {
    return tokenOrigin;
  }

  /** How TLS was configured, or null without TLS. */
  String tlsOrigin() {
    return tlsOrigin;
  }

  /**
   * The token to send now, or null: a token file is read again; {@code transform} names the
   * caller in errors.
   */
  String currentToken(String transform) {
    if (tokenFile == null) {
      return token;
    }
    try {
      return readTokenFile(tokenOrigin, tokenFile);
    } catch (IllegalArgumentException e) {
      throw new IllegalStateException(transform + ": " + e.getMessage(), e);
    }
  }

  private static String readTokenFile(String method, String path) {
    byte[] bytes;
    try {
      Path file = Paths.get(path);
      if (Files.isDirectory(file)) {
        throw new IllegalArgumentException(method + ": " + path + " is a directory, not a file holding the token");
      }
      if (Files.size(file) > MAX_TOKEN_FILE_BYTES) {
        throw new IllegalArgumentException(
            method + ": " + path + " is larger than " + MAX_TOKEN_FILE_BYTES + " bytes; it is not a token file");
      }
      bytes = Files.readAllBytes(file);
    } catch (IOException | RuntimeException e) {
      if (e instanceof IllegalArgumentException) {
        throw (IllegalArgumentException) e;
      }
      throw new IllegalArgumentException(method + ": cannot read the token file " + path + " (" + describe(e) + ")", e);
    }
    String token = new String(bytes, StandardCharsets.UTF_8).trim();
    checkToken(method + ": the token file " + path, token);
    return token;
  }

  /** A bearer token: visible ASCII characters, no whitespace (an HTTP/2 header value). */
  private static void checkToken(String where, String token) {
    if (token == null || token.isEmpty()) {
      throw new IllegalArgumentException(
          where + ": the token must not be " + (token == null ? "null" : "empty")
              + "; give the token the service was started with ($" + AUTH_TOKEN_ENV + " or --auth-token-file)");
    }
    for (int i = 0; i < token.length(); i++) {
      char c = token.charAt(i);
      if (c < 0x21 || c > 0x7e) {
        // Never the token itself, not even in part.
        throw new IllegalArgumentException(
            where + ": the token may hold only visible ASCII characters without spaces; character " + (i + 1)
                + " of " + token.length() + " is " + (Character.isWhitespace(c) ? "whitespace" : String.format("U+%04X", (int) c)));
      }
    }
  }

  private static void checkCertificates(String method, String path) {
    byte[] bytes = readFile(method, path, "certificate");
    Collection<? extends Certificate> certificates;
    try {
      certificates = CertificateFactory.getInstance("X.509").generateCertificates(new ByteArrayInputStream(bytes));
    } catch (CertificateException | RuntimeException e) {
      throw new IllegalArgumentException(
          method + ": " + path + " is not a PEM certificate file (" + describe(e)
              + "); expected -----BEGIN CERTIFICATE----- blocks",
          e);
    }
    if (certificates.isEmpty()) {
      throw new IllegalArgumentException(
          method + ": " + path + " holds no certificate; expected -----BEGIN CERTIFICATE----- blocks");
    }
  }

  private static void checkPrivateKey(String method, String path) {
    String pem = new String(readFile(method, path, "private key"), StandardCharsets.US_ASCII);
    Matcher matcher = PKCS8_KEY.matcher(pem);
    boolean decodes = false;
    if (matcher.find()) {
      try {
        decodes = Base64.getMimeDecoder().decode(matcher.group(1)).length > 0;
      } catch (IllegalArgumentException e) {
        decodes = false;
      }
    }
    if (!decodes) {
      String found = pem.contains("ENCRYPTED PRIVATE KEY") ? "an encrypted key"
          : pem.contains("RSA PRIVATE KEY") || pem.contains("EC PRIVATE KEY") ? "a key in the traditional (PKCS#1/SEC1) format"
          : "no PEM private key";
      throw new IllegalArgumentException(
          method + ": " + path + " holds " + found + "; expected an unencrypted PKCS#8 PEM key "
              + "(-----BEGIN PRIVATE KEY-----), e.g. from `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pem`");
    }
  }

  private static byte[] readFile(String method, String path, String what) {
    try {
      return Files.readAllBytes(Paths.get(path));
    } catch (IOException | RuntimeException e) {
      throw new IllegalArgumentException(method + ": cannot read the " + what + " file " + path + " (" + describe(e) + ")", e);
    }
  }

  private static String requirePath(String method, String path) {
    if (path == null || path.trim().isEmpty()) {
      throw new IllegalArgumentException(method + ": the path must be a non-empty string, got " + Model.quote(path));
    }
    return path;
  }

  static String describe(Throwable e) {
    return e.getClass().getSimpleName() + (e.getMessage() == null ? "" : ": " + e.getMessage());
  }

  private static boolean isSet(String value) {
    return value != null && !value.trim().isEmpty();
  }

  @Override
  public boolean equals(Object other) {
    if (!(other instanceof ServiceCredentials)) {
      return false;
    }
    ServiceCredentials that = (ServiceCredentials) other;
    return Objects.equals(token, that.token)
        && Objects.equals(tokenFile, that.tokenFile)
        && tls == that.tls
        && Objects.equals(trustedCertificate, that.trustedCertificate)
        && Objects.equals(clientCertificate, that.clientCertificate)
        && Objects.equals(clientKey, that.clientKey);
  }

  @Override
  public int hashCode() {
    return Objects.hash(token, tokenFile, tls, trustedCertificate, clientCertificate, clientKey);
  }

  /** Describes the settings; a token given as a value shows as {@code <hidden>}. */
  @Override
  public String toString() {
    StringBuilder s = new StringBuilder("ServiceCredentials{token=");
    s.append(token != null ? "<hidden>" : tokenFile != null ? "from file " + tokenFile : "none");
    s.append(", tls=");
    if (!tls) {
      s.append("off");
    } else {
      s.append(trustedCertificate != null ? "trusting " + trustedCertificate : "trusting the JVM's default trust store");
      if (clientCertificate != null) {
        s.append(", client certificate ").append(clientCertificate);
      }
    }
    return s.append('}').toString();
  }
}

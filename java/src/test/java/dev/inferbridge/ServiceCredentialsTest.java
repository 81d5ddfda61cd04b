package dev.inferbridge;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.Map;
import java.util.function.Function;
import org.apache.beam.model.expansion.v1.ExpansionApi.DiscoverSchemaTransformRequest;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.testing.CrashingRunner;
import org.apache.beam.sdk.transforms.Create;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;
import org.junit.Rule;
import org.junit.Test;
import org.junit.function.ThrowingRunnable;
import org.junit.rules.TemporaryFolder;

/**
 * {@link ServiceCredentials}: the value class, the environment defaults, and the expansion of
 * {@link Inference} and {@link Evaluate} through a vendored-gRPC service in this JVM that checks
 * the bearer token and serves TLS with the self-signed test certificates in {@code tls/}.
 */
public class ServiceCredentialsTest {
  private static final String TOKEN = "s3cret-Token_0123";

  private static final Schema INPUT =
      Schema.builder().addStringField("id").addArrayField("pixels", FieldType.DOUBLE).addInt64Field("label").build();

  private static final Inference BASE =
      Inference.of(SklearnModel.pickle("/m.pkl")).withKeyField("id").withFeatureField("pixels");

  @Rule public TemporaryFolder temp = new TemporaryFolder();

  private static String message(Class<? extends Throwable> type, ThrowingRunnable r) {
    return assertThrows(type, r).getMessage();
  }

  private static String message(ThrowingRunnable r) {
    return message(IllegalArgumentException.class, r);
  }

  private static void assertContains(String text, String... parts) {
    for (String part : parts) {
      assertTrue("expected \"" + part + "\" in: " + text, text.contains(part));
    }
  }

  private String file(String content) throws Exception {
    File file = temp.newFile();
    Files.write(file.toPath(), content.getBytes(StandardCharsets.UTF_8));
    return file.getPath();
  }

  private static final String SERVER_PEM = GrpcTestServer.resource("server.pem");
  private static final String OTHER_PEM = GrpcTestServer.resource("other.pem");
  private static final String CLIENT_PEM = GrpcTestServer.resource("client.pem");
  private static final String CLIENT_KEY = GrpcTestServer.resource("client.key");

  // ---- the value class --------------------------------------------------------------------

  @Test
  public void theTokenNeverAppearsInToStringOrMessages() {
    ServiceCredentials credentials = ServiceCredentials.tls(SERVER_PEM).withToken(TOKEN);
    assertEquals("ServiceCredentials{token=<hidden>, tls=trusting " + SERVER_PEM + "}", credentials.toString());
    String error = message(() -> ServiceCredentials.token("abc def-" + TOKEN));
    assertEquals(
        "ServiceCredentials.token(): the token may hold only visible ASCII characters without spaces; "
            + "character 4 of " + ("abc def-" + TOKEN).length() + " is whitespace",
        error);
    assertFalse(error.contains("abc"));
    assertFalse(new SecureExpansionServiceClientFactory.BearerToken(TOKEN).toString().contains(TOKEN));
  }

  @Test
  public void withMethodsReturnNewValues() {
    ServiceCredentials token = ServiceCredentials.token(TOKEN);
    ServiceCredentials both = token.withTrustedCertificate(SERVER_PEM);
    assertFalse(token.usesTls());
    assertTrue(both.usesTls());
    assertTrue(both.hasToken());
    assertEquals(SERVER_PEM, both.getTrustedCertificate());
    assertEquals(both, ServiceCredentials.tls(SERVER_PEM).withToken(TOKEN));
    assertEquals(both.hashCode(), ServiceCredentials.tls(SERVER_PEM).withToken(TOKEN).hashCode());
    assertNotEquals(both, ServiceCredentials.tls(SERVER_PEM).withToken(TOKEN + "x"));
    assertTrue(ServiceCredentials.none().isNone());
    assertTrue(ServiceCredentials.tls().usesTls());
    assertNull(ServiceCredentials.tls().getTrustedCertificate());
    assertEquals("ServiceCredentials{token=none, tls=trusting the JVM's default trust store}",
        ServiceCredentials.tls().toString());
  }

  @Test
  public void badValuesAreRejectedNamingTheMethodAndValue() throws Exception {
    assertEquals(
        "ServiceCredentials.token(): the token must not be empty; give the token the service was started with "
            + "($INFERBRIDGE_AUTH_TOKEN or --auth-token-file)",
        message(() -> ServiceCredentials.token("")));
    assertContains(message(() -> ServiceCredentials.tokenFromFile("/no/such/token")),
        "ServiceCredentials.tokenFromFile(\"/no/such/token\"): cannot read the token file /no/such/token (NoSuchFileException");
    String blank = file("\n  \n");
    assertContains(message(() -> ServiceCredentials.tokenFromFile(blank)),
        "ServiceCredentials.tokenFromFile(\"" + blank + "\"): the token file " + blank + ": the token must not be empty");
    assertContains(message(() -> ServiceCredentials.tokenFromFile(" ")),
        "ServiceCredentials.tokenFromFile(\" \"): the path must be a non-empty string");
    assertContains(message(() -> ServiceCredentials.tls("/no/such.pem")),
        "ServiceCredentials.tls(\"/no/such.pem\"): cannot read the certificate file /no/such.pem (NoSuchFileException");
    String notPem = file("hello");
    assertContains(message(() -> ServiceCredentials.token(TOKEN).withTrustedCertificate(notPem)),
        "withTrustedCertificate(\"" + notPem + "\"): " + notPem + " is not a PEM certificate file",
        "expected -----BEGIN CERTIFICATE----- blocks");
    String pkcs1 = file("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n");
    assertContains(message(() -> ServiceCredentials.tls(SERVER_PEM).withClientCertificate(CLIENT_PEM, pkcs1)),
        "withClientCertificate(\"" + CLIENT_PEM + "\", \"" + pkcs1 + "\"): " + pkcs1
            + " holds a key in the traditional (PKCS#1/SEC1) format; expected an unencrypted PKCS#8 PEM key",
        "openssl pkcs8 -topk8 -nocrypt");
    assertContains(message(() -> ServiceCredentials.tls(SERVER_PEM).withClientCertificate(CLIENT_KEY, CLIENT_KEY)),
        CLIENT_KEY + " is not a PEM certificate file");
    assertContains(message(() -> BASE.withServiceCredentials(null)), "withServiceCredentials(): credentials must not be null");
    assertContains(message(() -> Evaluate.of("label").withServiceCredentials(null)),
        "Evaluate.withServiceCredentials(): credentials must not be null");
  }

  @Test
  public void aTokenFileIsTrimmedAndReadAgainWhenUsed() throws Exception {
    String path = file("  first-token\n");
    ServiceCredentials credentials = ServiceCredentials.tokenFromFile(path);
    assertEquals("first-token", credentials.currentToken("Inference"));
    assertEquals("ServiceCredentials{token=from file " + path + ", tls=off}", credentials.toString());
    Files.write(new File(path).toPath(), "second-token\r\n".getBytes(StandardCharsets.UTF_8));
    assertEquals("second-token", credentials.currentToken("Inference"));
    Files.delete(new File(path).toPath());
    assertContains(message(IllegalStateException.class, () -> credentials.currentToken("Evaluate")),
        "Evaluate: ServiceCredentials.tokenFromFile(\"" + path + "\"): cannot read the token file " + path);
  }

  // ---- the environment --------------------------------------------------------------------

  private static Function<String, String> env(String... pairs) {
    Map<String, String> vars = new HashMap<>();
    for (int i = 0; i < pairs.length; i += 2) {
      vars.put(pairs[i], pairs[i + 1]);
    }
    return vars::get;
  }

  @Test
  public void theEnvironmentGivesTheDefaults() throws Exception {
    assertTrue(ServiceCredentials.fromEnvironment(env()).isNone());
    assertTrue(ServiceCredentials.fromEnvironment(env("INFERBRIDGE_AUTH_TOKEN", " ")).isNone());
    ServiceCredentials fromToken =
        ServiceCredentials.fromEnvironment(env("INFERBRIDGE_AUTH_TOKEN", TOKEN, "INFERBRIDGE_TLS_CA_FILE", SERVER_PEM));
    assertEquals(ServiceCredentials.tls(SERVER_PEM).withToken(TOKEN), fromToken);
    assertEquals("$INFERBRIDGE_AUTH_TOKEN", fromToken.tokenOrigin());
    String path = file(TOKEN + "\n");
    ServiceCredentials fromFile = ServiceCredentials.fromEnvironment(env("INFERBRIDGE_AUTH_TOKEN_FILE", path));
    assertEquals(ServiceCredentials.tokenFromFile(path), fromFile);
    // Both: the file, as the service reads them.
    assertEquals(fromFile, ServiceCredentials.fromEnvironment(env("INFERBRIDGE_AUTH_TOKEN", "other", "INFERBRIDGE_AUTH_TOKEN_FILE", path)));
    assertEquals(TOKEN, fromFile.currentToken("Inference"));
    ServiceCredentials mutual = ServiceCredentials.fromEnvironment(env(
        "INFERBRIDGE_TLS_CA_FILE", SERVER_PEM,
        "INFERBRIDGE_TLS_CLIENT_CERT_FILE", CLIENT_PEM,
        "INFERBRIDGE_TLS_CLIENT_KEY_FILE", CLIENT_KEY));
    assertEquals(ServiceCredentials.tls(SERVER_PEM).withClientCertificate(CLIENT_PEM, CLIENT_KEY), mutual);
  }

  @Test
  public void badEnvironmentsAreReportedNamingTheVariables() {
    assertContains(message(() -> ServiceCredentials.fromEnvironment(env("INFERBRIDGE_AUTH_TOKEN_FILE", "/no/token"))),
        "$INFERBRIDGE_AUTH_TOKEN_FILE=/no/token: cannot read the token file /no/token");
    assertContains(message(() -> ServiceCredentials.fromEnvironment(env("INFERBRIDGE_TLS_CA_FILE", "/no/ca.pem"))),
        "$INFERBRIDGE_TLS_CA_FILE=/no/ca.pem: cannot read the certificate file /no/ca.pem");
    assertContains(message(() -> ServiceCredentials.fromEnvironment(env("INFERBRIDGE_TLS_CLIENT_KEY_FILE", CLIENT_KEY))),
        "$INFERBRIDGE_TLS_CLIENT_KEY_FILE is set without $INFERBRIDGE_TLS_CLIENT_CERT_FILE");
    String error = message(IllegalStateException.class,
        () -> ExpansionService.credentials("Evaluate", "host:1", null, null, env("INFERBRIDGE_AUTH_TOKEN", "a b")));
    assertContains(error, "Evaluate: $INFERBRIDGE_AUTH_TOKEN: the token may hold only visible ASCII characters");
  }

  @Test
  public void aServiceThisJvmStartsIsReachedAsItsInheritedEnvironmentSays() {
    PythonEnvironment python = PythonEnvironment.executable("/venv/bin/python");
    Function<String, String> vars = env("INFERBRIDGE_AUTH_TOKEN", TOKEN, "INFERBRIDGE_TLS_CA_FILE", SERVER_PEM);
    assertEquals(ServiceCredentials.tls(SERVER_PEM).withToken(TOKEN),
        ExpansionService.credentials("Inference", "host:1", python, null, vars));
    // Without $INFERBRIDGE_TLS_CERT_FILE the service this JVM starts serves no TLS.
    assertEquals(ServiceCredentials.token(TOKEN), ExpansionService.credentials("Inference", null, python, null, vars));
    Function<String, String> pythonVar = env("INFERBRIDGE_PYTHON", "/venv", "INFERBRIDGE_TLS_CA_FILE", SERVER_PEM);
    assertTrue(ExpansionService.credentials("Inference", null, null, null, pythonVar).isNone());
    // With it, TLS trusting $INFERBRIDGE_TLS_CA_FILE, or else the service's certificate.
    Function<String, String> serving = env("INFERBRIDGE_TLS_CERT_FILE", OTHER_PEM, "INFERBRIDGE_TLS_CA_FILE", SERVER_PEM);
    assertEquals(ServiceCredentials.tls(SERVER_PEM), ExpansionService.credentials("Inference", null, python, null, serving));
    ServiceCredentials own =
        ExpansionService.credentials("Inference", null, python, null, env("INFERBRIDGE_TLS_CERT_FILE", OTHER_PEM));
    assertEquals(ServiceCredentials.tls(OTHER_PEM), own);
    assertEquals("$INFERBRIDGE_TLS_CERT_FILE=" + OTHER_PEM, own.tlsOrigin());
    assertContains(message(IllegalStateException.class, () -> ExpansionService.credentials(
            "Evaluate", null, python, null, env("INFERBRIDGE_TLS_CERT_FILE", "/no/cert.pem"))),
        "Evaluate: $INFERBRIDGE_TLS_CERT_FILE=/no/cert.pem: cannot read the certificate file /no/cert.pem");
    // Given credentials are used as given.
    assertEquals(ServiceCredentials.none(),
        ExpansionService.credentials("Inference", "host:1", null, ServiceCredentials.none(), vars));
    assertEquals(ServiceCredentials.tls(SERVER_PEM),
        ExpansionService.credentials("Inference", null, python, ServiceCredentials.tls(SERVER_PEM), env()));
  }

  // ---- through a gRPC service -------------------------------------------------------------

  private static Pipeline pipeline() {
    PipelineOptions options = PipelineOptionsFactory.create();
    options.setRunner(CrashingRunner.class);
    return Pipeline.create(options);
  }

  private static PCollection<Row> input(Pipeline pipeline) {
    Row row = Row.withSchema(INPUT).addValues("a", Arrays.asList(1.0, 2.0), 1L).build();
    return pipeline.apply(Create.of(row).withRowSchema(INPUT));
  }

  private static FakeExpansionService inferences() {
    return FakeExpansionService.returning(BASE.outputSchema(INPUT), Inference.FAILURE_SCHEMA);
  }

  private static InferenceResult expand(GrpcTestServer server, ServiceCredentials credentials) {
    return input(pipeline()).apply(BASE.withExpansionService(server.address()).withServiceCredentials(credentials));
  }

  @Test
  public void theTokenIsSentWithEveryCall() throws Exception {
    FakeExpansionService service = inferences();
    try (GrpcTestServer server = GrpcTestServer.plaintext(service, TOKEN)) {
      InferenceResult result = expand(server, ServiceCredentials.token(TOKEN));
      assertTrue(result.getInferences().getSchema().equivalent(BASE.outputSchema(INPUT)));
      assertEquals(InferenceConfig.RUN_INFERENCE_URN, service.request.getTransform().getSpec().getUrn());
      try (SecureExpansionServiceClientFactory factory =
          new SecureExpansionServiceClientFactory("Inference", ServiceCredentials.token(TOKEN))) {
        factory.client(server.address()).discover(DiscoverSchemaTransformRequest.getDefaultInstance());
      }
      assertEquals(Arrays.asList("Bearer " + TOKEN, "Bearer " + TOKEN), server.authorizations());
    }
  }

  @Test
  public void aMissingTokenIsReportedWithHowToGiveOne() throws Exception {
    try (GrpcTestServer server = GrpcTestServer.plaintext(inferences(), TOKEN)) {
      String error = message(IllegalStateException.class, () -> expand(server, ServiceCredentials.none()));
      assertEquals(
          "Inference: the InferBridge expansion service at " + server.address() + " requires a bearer token, and "
              + "none was sent (UNAUTHENTICATED: this service requires a bearer token). Give the token the service "
              + "was started with ($INFERBRIDGE_AUTH_TOKEN or --auth-token-file) with "
              + "withServiceCredentials(ServiceCredentials.token(token)) or withServiceCredentials("
              + "ServiceCredentials.tokenFromFile(\"/path/to/token\")), or set $INFERBRIDGE_AUTH_TOKEN or "
              + "$INFERBRIDGE_AUTH_TOKEN_FILE",
          error);
      assertEquals(Collections.singletonList(GrpcTestServer.MISSING), server.authorizations());
    }
  }

  @Test
  public void aRejectedTokenIsReportedWithWhereItCameFromButNotItsValue() throws Exception {
    String path = file("wrong-" + TOKEN);
    try (GrpcTestServer server = GrpcTestServer.plaintext(inferences(), TOKEN)) {
      String error = message(IllegalStateException.class, () -> expand(server, ServiceCredentials.tokenFromFile(path)));
      assertContains(error,
          "Inference: the InferBridge expansion service at " + server.address() + " rejected the bearer token given "
              + "by ServiceCredentials.tokenFromFile(\"" + path + "\") (UNAUTHENTICATED: the bearer token is not valid). "
              + "Give the token the service was started with");
      assertFalse(error, error.contains("wrong-"));
    }
  }

  @Test
  public void tlsTrustingTheServiceCertificateWorks() throws Exception {
    FakeExpansionService service = inferences();
    try (GrpcTestServer server = GrpcTestServer.tls(service, TOKEN)) {
      InferenceResult result = expand(server, ServiceCredentials.tls(SERVER_PEM).withToken(TOKEN));
      assertTrue(result.getFailures().getSchema().equivalent(Inference.FAILURE_SCHEMA));
      assertEquals(Collections.singletonList("Bearer " + TOKEN), server.authorizations());
    }
  }

  @Test
  public void anUntrustedCertificateFailsTheHandshakeNamingTheFileAndAddress() throws Exception {
    try (GrpcTestServer server = GrpcTestServer.tls(inferences(), null)) {
      String error = message(IllegalStateException.class, () -> expand(server, ServiceCredentials.tls(OTHER_PEM)));
      assertContains(error,
          "Inference: the TLS handshake with the InferBridge expansion service at " + server.address() + " failed (",
          "TLS trusts the certificate file " + OTHER_PEM + " (given by ServiceCredentials.tls(\"" + OTHER_PEM + "\"))",
          "name the host localhost in its subjectAltName");
      assertTrue(server.authorizations().isEmpty());
    }
  }

  @Test
  public void tlsToAPlaintextServiceSaysItDoesNotAnswerTls() throws Exception {
    try (GrpcTestServer server = GrpcTestServer.plaintext(inferences(), null)) {
      String error = message(IllegalStateException.class, () -> expand(server, ServiceCredentials.tls(SERVER_PEM)));
      assertContains(error,
          "Inference: the InferBridge expansion service at " + server.address() + " does not answer TLS (",
          "Start it with --tls-cert-file and --tls-key-file, or leave TLS out of the credentials");
    }
  }

  @Test
  public void plaintextToATlsServiceSuggestsTrustingItsCertificate() throws Exception {
    try (GrpcTestServer server = GrpcTestServer.tls(inferences(), null)) {
      String error = message(IllegalStateException.class, () -> expand(server, ServiceCredentials.none()));
      assertContains(error,
          "Inference: the InferBridge expansion service at " + server.address() + " closed the connection (UNAVAILABLE",
          "); if the service uses TLS (--tls-cert-file), trust its certificate with "
              + "withServiceCredentials(ServiceCredentials.tls(\"/path/to/ca.pem\")) or $INFERBRIDGE_TLS_CA_FILE");
    }
  }

  @Test
  public void mutualTlsPresentsTheClientCertificate() throws Exception {
    try (GrpcTestServer server = GrpcTestServer.mutualTls(inferences(), TOKEN)) {
      expand(server, ServiceCredentials.tls(SERVER_PEM).withClientCertificate(CLIENT_PEM, CLIENT_KEY).withToken(TOKEN));
      assertEquals(Collections.singletonList("Bearer " + TOKEN), server.authorizations());
      String error = message(IllegalStateException.class,
          () -> expand(server, ServiceCredentials.tls(SERVER_PEM).withToken(TOKEN)));
      assertContains(error, "Inference: ", server.address(),
          "if the service requires client certificates (--tls-client-ca-file), give one with "
              + "ServiceCredentials.withClientCertificate(certPem, keyPem)");
    }
  }

  @Test
  public void evaluateSendsTheCredentialsToo() throws Exception {
    FakeExpansionService service = FakeExpansionService.returningOne("output", Evaluate.OUTPUT_SCHEMA);
    try (GrpcTestServer server = GrpcTestServer.tls(service, TOKEN)) {
      PCollection<Row> rows = input(pipeline()).apply(
          BASE.withExpansionService(server.address())
              .withServiceCredentials(ServiceCredentials.tls(SERVER_PEM).withToken(TOKEN))
              .withExpansionClient(inferences()))
          .getInferences()
          .apply(Evaluate.of("key").withExpansionService(server.address())
              .withServiceCredentials(ServiceCredentials.tls(SERVER_PEM).withToken(TOKEN)));
      assertTrue(rows.getSchema().equivalent(Evaluate.OUTPUT_SCHEMA));
      assertEquals(Evaluate.EVALUATE_URN, service.request.getTransform().getSpec().getUrn());
      assertEquals(Collections.singletonList("Bearer " + TOKEN), server.authorizations());

      String error = message(IllegalStateException.class, () -> input(pipeline()).apply(
          Evaluate.of("id").withPredictionField("pixels").withModelIdField("label")
              .withExpansionService(server.address())
              .withServiceCredentials(ServiceCredentials.tls(SERVER_PEM).withToken("other"))));
      assertContains(error, "Evaluate: the InferBridge expansion service at " + server.address()
          + " rejected the bearer token given by withToken()");
    }
  }

  @Test
  public void responsesWithArtifactsToStageAreRefusedWithTheReason() throws Exception {
    try (GrpcTestServer server = GrpcTestServer.plaintext(inferences().stagingArtifacts(), TOKEN)) {
      String error = message(IllegalStateException.class, () -> expand(server, ServiceCredentials.token(TOKEN)));
      assertContains(error,
          "Inference: the expansion service at " + server.address() + " returned environments with artifacts to "
              + "stage: fake_staging (1). Beam's Java SDK fetches those over a plaintext connection without the token");
    }
  }

  @Test
  public void closingTheFactoryShutsItsChannelsDown() throws Exception {
    SecureExpansionServiceClientFactory factory =
        new SecureExpansionServiceClientFactory("Inference", ServiceCredentials.token(TOKEN));
    SecureExpansionServiceClientFactory.Client client = factory.client("localhost:1");
    factory.close();
    assertTrue(client.isTerminated());
  }

  @Test
  public void anUnreadableCertificateAtExpansionTimeIsNamed() throws Exception {
    File pem = temp.newFile("ca.pem");
    Files.copy(new File(SERVER_PEM).toPath(), pem.toPath(), java.nio.file.StandardCopyOption.REPLACE_EXISTING);
    ServiceCredentials credentials = ServiceCredentials.tls(pem.getPath());
    Files.delete(pem.toPath());
    String error = message(IllegalStateException.class,
        () -> input(pipeline()).apply(BASE.withExpansionService("localhost:1").withServiceCredentials(credentials)));
    assertContains(error,
        "Inference: cannot read " + pem.getPath() + " (given by ServiceCredentials.tls(\"" + pem.getPath() + "\")): ");
  }
}

package dev.inferbridge;

import java.io.File;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.URISyntaxException;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.InsecureServerCredentials;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.Metadata;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.Server;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.ServerCall;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.ServerCallHandler;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.ServerCredentials;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.ServerInterceptor;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.ServerInterceptors;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.Status;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.TlsServerCredentials;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.netty.NettyServerBuilder;

/**
 * A {@link FakeExpansionService} served by vendored gRPC on a free loopback port, optionally over
 * TLS (the test certificate {@code tls/server.pem}, optionally requiring client certificates
 * signed by {@code tls/client.pem}) and optionally requiring a bearer token, as the InferBridge
 * service does: without the right {@code authorization: Bearer <token>} every call fails with
 * UNAUTHENTICATED. Records the authorization header of every call.
 */
final class GrpcTestServer implements AutoCloseable {
  static final String MISSING = "<none>";

  private final Server server;
  private final List<String> authorizations = Collections.synchronizedList(new ArrayList<String>());

  private GrpcTestServer(FakeExpansionService service, String token, boolean tls, boolean clientCertificates)
      throws IOException {
    ServerCredentials credentials;
    if (tls) {
      TlsServerCredentials.Builder builder =
          TlsServerCredentials.newBuilder().keyManager(new File(resource("server.pem")), new File(resource("server.key")));
      if (clientCertificates) {
        builder.trustManager(new File(resource("client.pem"))).clientAuth(TlsServerCredentials.ClientAuth.REQUIRE);
      }
      credentials = builder.build();
    } else {
      credentials = InsecureServerCredentials.create();
    }
    server =
        NettyServerBuilder.forAddress(new InetSocketAddress("127.0.0.1", 0), credentials)
            .addService(ServerInterceptors.intercept(service.grpcService(), new CheckToken(token)))
            .build()
            .start();
  }

  static GrpcTestServer plaintext(FakeExpansionService service, String token) throws IOException {
    return new GrpcTestServer(service, token, false, false);
  }

  static GrpcTestServer tls(FakeExpansionService service, String token) throws IOException {
    return new GrpcTestServer(service, token, true, false);
  }

  static GrpcTestServer mutualTls(FakeExpansionService service, String token) throws IOException {
    return new GrpcTestServer(service, token, true, true);
  }

  /** The path of the test TLS file {@code name} (under {@code dev/inferbridge/tls/}). */
  static String resource(String name) {
    try {
      return Paths.get(GrpcTestServer.class.getResource("tls/" + name).toURI()).toString();
    } catch (URISyntaxException e) {
      throw new IllegalStateException(e);
    }
  }

  /** {@code localhost:port}: the certificate names localhost. */
  String address() {
    return "localhost:" + server.getPort();
  }

  /** The authorization header of each call so far ({@link #MISSING} when absent). */
  List<String> authorizations() {
    synchronized (authorizations) {
      return new ArrayList<>(authorizations);
    }
  }

  @Override
  public void close() throws InterruptedException {
    server.shutdownNow().awaitTermination(10, TimeUnit.SECONDS);
  }

  private final class CheckToken implements ServerInterceptor {
    private final String expected;

    CheckToken(String token) {
      this.expected = token == null ? null : "Bearer " + token;
    }

    @Override
    public <ReqT, RespT> ServerCall.Listener<ReqT> interceptCall(
        ServerCall<ReqT, RespT> call, Metadata headers, ServerCallHandler<ReqT, RespT> next) {
      String authorization = headers.get(SecureExpansionServiceClientFactory.AUTHORIZATION);
      authorizations.add(authorization == null ? MISSING : authorization);
      if (expected != null && !expected.equals(authorization)) {
        call.close(
            Status.UNAUTHENTICATED.withDescription(
                authorization == null ? "this service requires a bearer token" : "the bearer token is not valid"),
            new Metadata());
        return new ServerCall.Listener<ReqT>() {};
      }
      return next.startCall(call, headers);
    }
  }
}

package dev.inferbridge;

import java.io.File;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
import org.apache.beam.model.expansion.v1.ExpansionApi.DiscoverSchemaTransformRequest;
import org.apache.beam.model.expansion.v1.ExpansionApi.DiscoverSchemaTransformResponse;
import org.apache.beam.model.expansion.v1.ExpansionApi.ExpansionRequest;
import org.apache.beam.model.expansion.v1.ExpansionApi.ExpansionResponse;
import org.apache.beam.model.expansion.v1.ExpansionServiceGrpc;
import org.apache.beam.model.pipeline.v1.Endpoints.ApiServiceDescriptor;
import org.apache.beam.model.pipeline.v1.RunnerApi;
import org.apache.beam.sdk.util.construction.ExpansionServiceClient;
import org.apache.beam.sdk.util.construction.ExpansionServiceClientFactory;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.CallOptions;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.Channel;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.ChannelCredentials;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.ClientCall;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.ClientInterceptor;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.ForwardingClientCall;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.Grpc;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.InsecureChannelCredentials;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.ManagedChannel;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.ManagedChannelBuilder;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.Metadata;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.MethodDescriptor;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.TlsChannelCredentials;

/**
 * Expansion clients that reach the service over TLS and/or with a bearer token, for Beam's {@code
 * External.of(urn, payload, endpoint, factory)}: every call (expansion, discovery) goes through one
 * channel per endpoint, whose interceptor adds {@code authorization: Bearer <token>}. {@link #close()} shuts the channels down; transforms close the factory once
 * they are expanded.
 *
 * <p>Beam's {@code External} (2.65) resolves the artifacts of the environments an expansion
 * returns over a channel of its own, in plaintext and without the token. The InferBridge service
 * stages no artifacts, so that never happens with it; a response that does carry artifacts is
 * refused here with an explanation instead of failing later with a misleading error.
 */
final class SecureExpansionServiceClientFactory implements ExpansionServiceClientFactory {
  static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

  private static final long CLOSE_GRACE_SECS = 5;

  private final String transform;
  private final ServiceCredentials credentials;
  private final ChannelCredentials channelCredentials;
  private final String token;
  private final Map<String, Client> clients = new ConcurrentHashMap<>();

  /**
   * Reads the token (a token file again) and the TLS files now, so that a file that became
   * unreadable is reported before expansion; {@code transform} names the caller in errors.
   */
  SecureExpansionServiceClientFactory(String transform, ServiceCredentials credentials) {
    this.transform = transform;
    this.credentials = credentials;
    this.token = credentials.currentToken(transform);
    this.channelCredentials = channelCredentials(transform, credentials);
  }

  private static ChannelCredentials channelCredentials(String transform, ServiceCredentials credentials) {
    if (!credentials.usesTls()) {
      return InsecureChannelCredentials.create();
    }
    TlsChannelCredentials.Builder tls = TlsChannelCredentials.newBuilder();
    String file = credentials.getTrustedCertificate();
    try {
      if (file != null) {
        tls.trustManager(new File(file));
      }
      if (credentials.getClientCertificate() != null) {
        file = credentials.getClientCertificate() + " or " + credentials.getClientKey();
        tls.keyManager(new File(credentials.getClientCertificate()), new File(credentials.getClientKey()));
      }
    } catch (IOException | RuntimeException e) {
      throw new IllegalStateException(
          transform + ": cannot read " + file + " (given by " + credentials.tlsOrigin() + "): "
              + ServiceCredentials.describe(e),
          e);
    }
    return tls.build();
  }

  @Override
  public ExpansionServiceClient getExpansionServiceClient(ApiServiceDescriptor endpoint) {
    return client(endpoint.getUrl());
  }

  /** The client of the service at {@code address}, created (with its channel) on first use. */
  Client client(String address) {
    return clients.computeIfAbsent(address, this::newClient);
  }

  private Client newClient(String address) {
    ManagedChannelBuilder<?> builder;
    try {
      builder = Grpc.newChannelBuilder(address, channelCredentials);
    } catch (RuntimeException e) {
      // e.g. a certificate or key file that the TLS implementation cannot use.
      throw new IllegalStateException(
          transform + ": cannot set up " + (credentials.usesTls() ? "TLS (" + credentials.tlsOrigin() + ")" : "a channel")
              + " for the InferBridge expansion service at " + address + ": " + ServiceCredentials.describe(e),
          e);
    }
    builder.maxInboundMessageSize(Integer.MAX_VALUE);
    if (token != null) {
      builder.intercept(new BearerToken(token));
    }
    return new Client(address, builder.build());
  }

  @Override
  public void close() {
    for (Client client : clients.values()) {
      client.close();
    }
    clients.clear();
  }

  /** Adds {@code authorization: Bearer <token>} to the metadata of every call. */
  static final class BearerToken implements ClientInterceptor {
    private final String header;

    BearerToken(String token) {
      this.header = "Bearer " + token;
    }

    @Override
    public <ReqT, RespT> ClientCall<ReqT, RespT> interceptCall(
        MethodDescriptor<ReqT, RespT> method, CallOptions callOptions, Channel next) {
      return new ForwardingClientCall.SimpleForwardingClientCall<ReqT, RespT>(next.newCall(method, callOptions)) {
        @Override
        public void start(Listener<RespT> responseListener, Metadata headers) {
          headers.discardAll(AUTHORIZATION);
          headers.put(AUTHORIZATION, header);
          super.start(responseListener, headers);
        }
      };
    }

    @Override
    public String toString() {
      return "BearerToken{<hidden>}";
    }
  }

  /** Expansion and discovery through one channel. */
  final class Client implements ExpansionServiceClient {
    private final String address;
    private final ManagedChannel channel;
    private final ExpansionServiceGrpc.ExpansionServiceBlockingStub expansion;

    Client(String address, ManagedChannel channel) {
      this.address = address;
      this.channel = channel;
      this.expansion = ExpansionServiceGrpc.newBlockingStub(channel);
    }

    @Override
    public ExpansionResponse expand(ExpansionRequest request) {
      ExpansionResponse response = expansion.expand(request);
      List<String> staging = new ArrayList<>();
      Map<String, RunnerApi.Environment> before = request.getComponents().getEnvironmentsMap();
      for (Map.Entry<String, RunnerApi.Environment> env : response.getComponents().getEnvironmentsMap().entrySet()) {
        if (!before.containsKey(env.getKey()) && env.getValue().getDependenciesCount() > 0) {
          staging.add(env.getKey() + " (" + env.getValue().getDependenciesCount() + ")");
        }
      }
      if (!staging.isEmpty() && response.getError().isEmpty()) {
        throw new IllegalStateException(
            transform + ": the expansion service at " + address + " returned environments with artifacts to "
                + "stage: " + String.join(", ", staging) + ". Beam's Java SDK fetches those over a plaintext "
                + "connection without the token, which a service that requires TLS or a token refuses; the "
                + "InferBridge expansion service stages no artifacts, so this is another service or version");
      }
      return response;
    }

    @Override
    public DiscoverSchemaTransformResponse discover(DiscoverSchemaTransformRequest request) {
      return expansion.discoverSchemaTransform(request);
    }

    boolean isTerminated() {
      return channel.isTerminated();
    }

    @Override
    public void close() {
      channel.shutdown();
      try {
        if (!channel.awaitTermination(CLOSE_GRACE_SECS, TimeUnit.SECONDS)) {
          channel.shutdownNow();
        }
      } catch (InterruptedException e) {
        channel.shutdownNow();
        Thread.currentThread().interrupt();
      }
    }
  }
}

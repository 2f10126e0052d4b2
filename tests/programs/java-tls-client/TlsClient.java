// A TLS client made by the JVM itself (JSSE: Java code, no native TLS library), for
// tests/tests/java.rs. `TlsClient HOST PORT NAME LINE`: handshakes (SNI NAME), prints
// `handshake=ok PROTOCOL`, writes LINE; on failure prints `refused_after_ms=N` (from just before
// the handshake) and exits 1. `TlsClient wait`: starts the JVM and waits for stdin to close.
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.security.cert.X509Certificate;
import java.util.List;
import javax.net.ssl.*;

public class TlsClient {
    public static void main(String[] a) throws Exception {
        if (a.length == 1 && a[0].equals("wait")) {
            System.out.println("ready");
            System.out.flush();
            while (System.in.read() >= 0) {}
            return;
        }
        // The test's peer has a throwaway certificate: trust it (and only the test talks to it).
        TrustManager[] any = {new X509TrustManager() {
            public void checkClientTrusted(X509Certificate[] c, String t) {}
            public void checkServerTrusted(X509Certificate[] c, String t) {}
            public X509Certificate[] getAcceptedIssuers() { return new X509Certificate[0]; }
        }};
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(null, any, null);
        SSLSocket s = (SSLSocket) ctx.getSocketFactory().createSocket(a[0], Integer.parseInt(a[1]));
        SSLParameters p = s.getSSLParameters();
        p.setServerNames(List.of(new SNIHostName(a[2])));
        s.setSSLParameters(p);
        long start = System.nanoTime();
        try {
            s.startHandshake();
            System.out.println("handshake=ok " + s.getSession().getProtocol());
            OutputStream out = s.getOutputStream();
            out.write(a[3].getBytes(StandardCharsets.UTF_8));
            out.flush();
            s.close();
        } catch (Exception e) {
            System.out.println("refused_after_ms=" + (System.nanoTime() - start) / 1000000);
            System.out.println("error=" + e);
            System.exit(1);
        }
    }
}

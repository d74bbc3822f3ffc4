"""Test certificates for the TLS end-to-end tests, made with the `openssl` command line tool.

Certs(dir) writes into `dir` (the test's temporary directory):
  ca.pem / ca.key             a test CA ("batv e2e test CA")
  relay.pem / relay.key       server cert for "relay.test" signed by the CA (relay-chain.pem =
                              leaf + CA)
  mx.pem / mx.key             server cert for "mx.test" signed by the CA
  expired.pem / expired.key   cert for "mx.test" signed by the CA, valid only in 2020
  selfsigned.pem / .key       self-signed cert for "mx.test" (not chained to the CA)
  other.key                   a key that matches none of the certificates
Each attribute (certs.ca, certs.relay_cert, ...) is the absolute path. EC P-256 keys keep the
generation fast; every openssl run is bounded by a timeout.

Also: client_context(ca=None, hostname_check=True) for Python clients, server_context(cert, key)
for Python servers, client_hello_bytes(server_hostname) (the raw bytes of a TLS ClientHello, for
a client that gives up half way through the handshake).
"""
import os
import ssl
import subprocess
import textwrap

OPENSSL = "openssl"
TIMEOUT = 30


def _run(args, cwd):
    p = subprocess.run([OPENSSL] + list(args), cwd=cwd, capture_output=True, timeout=TIMEOUT)
    if p.returncode != 0:
        raise RuntimeError("openssl %s failed (%d): %s"
                           % (" ".join(args), p.returncode, p.stderr.decode(errors="replace")))
    return p.stdout


def _keygen(path, cwd):
    _run(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path], cwd)
    os.chmod(path, 0o600)


_LEAF_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:{name}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

# Minimal `openssl ca` setup: the only way in OpenSSL 3.0 to give a certificate an explicit
# (past) validity window (`x509 -req` learnt -not_before/-not_after only in 3.4).
_CA_CONF = """\
[ ca ]
default_ca = testca
[ testca ]
dir = {dir}
database = $dir/ca-index.txt
new_certs_dir = $dir/ca-newcerts
serial = $dir/ca-serial
certificate = $dir/ca.pem
private_key = $dir/ca.key
default_md = sha256
policy = anything
copy_extensions = none
unique_subject = no
email_in_dn = no
[ anything ]
commonName = supplied
[ leaf ]
""" + _LEAF_EXT


class Certs:
    def __init__(self, directory):
        self.dir = os.path.abspath(directory)
        d = self.dir
        p = lambda n: os.path.join(d, n)  # noqa: E731
        self.ca, self.ca_key = p("ca.pem"), p("ca.key")
        self.relay_cert, self.relay_key = p("relay.pem"), p("relay.key")
        self.relay_chain = p("relay-chain.pem")
        self.mx_cert, self.mx_key = p("mx.pem"), p("mx.key")
        self.expired_cert, self.expired_key = p("expired.pem"), p("expired.key")
        self.selfsigned_cert, self.selfsigned_key = p("selfsigned.pem"), p("selfsigned.key")
        self.other_key = p("other.key")

        # CA
        _keygen(self.ca_key, d)
        _run(["req", "-x509", "-new", "-key", self.ca_key, "-out", self.ca, "-days", "30",
              "-subj", "/CN=batv e2e test CA", "-sha256",
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"], d)
        # leaves signed by the CA
        self._leaf("relay.test", self.relay_cert, self.relay_key)
        self._leaf("mx.test", self.mx_cert, self.mx_key)
        with open(self.relay_chain, "w") as out:
            for f in (self.relay_cert, self.ca):
                with open(f) as inp:
                    out.write(inp.read())
        # expired leaf (valid 2020-01-01 .. 2020-02-01) via `openssl ca`
        self._expired_leaf("mx.test", self.expired_cert, self.expired_key)
        # self-signed mx.test
        _keygen(self.selfsigned_key, d)
        _run(["req", "-x509", "-new", "-key", self.selfsigned_key, "-out", self.selfsigned_cert,
              "-days", "30", "-subj", "/CN=mx.test", "-sha256",
              "-addext", "subjectAltName=DNS:mx.test",
              "-addext", "basicConstraints=critical,CA:FALSE",
              "-addext", "extendedKeyUsage=serverAuth"], d)
        _keygen(self.other_key, d)

    def _leaf(self, name, cert, key):
        _keygen(key, self.dir)
        csr = cert + ".csr"
        ext = cert + ".ext"
        with open(ext, "w") as f:
            f.write(_LEAF_EXT.format(name=name))
        _run(["req", "-new", "-key", key, "-out", csr, "-subj", "/CN=" + name], self.dir)
        _run(["x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
              "-CAcreateserial", "-out", cert, "-days", "30", "-sha256", "-extfile", ext], self.dir)

    def _expired_leaf(self, name, cert, key):
        d = self.dir
        _keygen(key, d)
        os.makedirs(os.path.join(d, "ca-newcerts"), exist_ok=True)
        open(os.path.join(d, "ca-index.txt"), "w").close()
        with open(os.path.join(d, "ca-serial"), "w") as f:
            f.write("1000\n")
        conf = os.path.join(d, "ca.cnf")
        with open(conf, "w") as f:
            f.write(_CA_CONF.format(dir=d, name=name))
        csr = cert + ".csr"
        _run(["req", "-new", "-key", key, "-out", csr, "-subj", "/CN=" + name], d)
        _run(["ca", "-batch", "-config", conf, "-extensions", "leaf", "-in", csr, "-out", cert,
              "-startdate", "20200101000000Z", "-enddate", "20200201000000Z", "-notext"], d)

    def text(self, cert):
        """`openssl x509 -noout -subject -dates -ext subjectAltName` of a certificate."""
        return _run(["x509", "-in", cert, "-noout", "-subject", "-issuer", "-dates", "-ext",
                     "subjectAltName"], self.dir).decode(errors="replace")


def client_context(ca=None, hostname_check=True):
    """A TLS client context: verifying against `ca` (host name checked when hostname_check),
    or verifying nothing when ca is None."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cafile=ca)
        ctx.check_hostname = hostname_check
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def client_hello_bytes(server_hostname="relay.test"):
    """The first flight of a TLS client (a ClientHello record), produced with an in-memory
    SSLObject so that it can be written to a plain socket."""
    ctx = client_context()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_side=False, server_hostname=server_hostname)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    data = out.read()
    if not data or data[0] != 0x16:
        raise RuntimeError("no ClientHello produced: %r" % data[:16])
    return data


def describe(directory):
    return textwrap.indent("\n".join(sorted(os.listdir(directory))), "  ")

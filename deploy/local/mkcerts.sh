#!/bin/sh
# Makes the certificates of the local demo mesh with the openssl CLI:
#   OUTDIR/ca.crt ca.key                       the mesh's root CA (ECDSA P-256, 10 years)
#   OUTDIR/<name>.crt <name>.key               a workload certificate for each NAME given
#                                              (default: web api intruder), with the URI SAN
#                                              spiffe://TRUST_DOMAIN/ns/NS/sa/NAME
# Usage: mkcerts.sh OUTDIR [NAME...]
# Environment: TRUST_DOMAIN (default cluster.local), NS (default shop), DAYS (default 1),
# DNS_SUFFIX (when set, each certificate also gets the DNS SAN NAME.DNS_SUFFIX, for peers
# such as nginx that verify a server by name).
# An existing CA in OUTDIR is reused, so more workloads can be added later.
set -eu

[ $# -ge 1 ] || { echo "usage: $0 OUTDIR [NAME...]" >&2; exit 2; }
out=$1
shift
[ $# -ge 1 ] || set -- web api intruder
td=${TRUST_DOMAIN:-cluster.local}
ns=${NS:-shop}
days=${DAYS:-1}

mkdir -p "$out"
umask 077

if [ ! -f "$out/ca.crt" ] || [ ! -f "$out/ca.key" ]; then
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
        -keyout "$out/ca.key" -out "$out/ca.crt" -days 3650 \
        -subj "/O=Tether demo/CN=Tether demo root CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    echo "mkcerts: CA $out/ca.crt"
fi

for name in "$@"; do
    id="spiffe://$td/ns/$ns/sa/$name"
    ext="$out/$name.ext"
    cat >"$ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=URI:$id${DNS_SUFFIX:+,DNS:$name.$DNS_SUFFIX}
EXT
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$out/$name.key" -out "$out/$name.csr" -subj "/O=Tether demo/CN=$name" \
        2>/dev/null
    openssl x509 -req -in "$out/$name.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
        -CAcreateserial -days "$days" -sha256 -extfile "$ext" -out "$out/$name.crt" \
        2>/dev/null
    rm -f "$out/$name.csr" "$ext"
    echo "mkcerts: $name -> $id (serial $(openssl x509 -in "$out/$name.crt" -noout -serial | cut -d= -f2))"
done
chmod 644 "$out"/*.crt

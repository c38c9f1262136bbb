#!/usr/bin/env bash
# Install bladecodec as services on a Debian/Ubuntu (ground) or JetPack (drone) machine. Run as root.
#   deploy/install.sh ground                 broker + ground daemon
#   deploy/install.sh edge DRONE_ID          edge service (copy ca.crt and the drone's password over first)
#   deploy/install.sh add-drone DRONE_ID     on the ground: create the drone's broker password
set -euo pipefail
ROLE=${1:?usage: install.sh ground | edge DRONE_ID | add-drone DRONE_ID}
SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/bladecodec

install_code() {
    id bladecodec >/dev/null 2>&1 || useradd --system --home /var/lib/bladecodec --shell /usr/sbin/nologin bladecodec
    mkdir -p "$PREFIX" /etc/bladecodec
    rsync -a --delete --exclude .git "$SRC/" "$PREFIX/src/"
    python3 -m venv "$PREFIX/venv"
    # On a Jetson install NVIDIA's JetPack torch wheel into the venv first; on x86: torch==2.13.0 (CPU).
    "$PREFIX/venv/bin/pip" install "$PREFIX/src"
    ln -sfn "$PREFIX/src/docs" "$PREFIX/docs"
}

make_certs() {   # a private CA and the broker's certificate (replace with your PKI if you have one)
    local d=/etc/mosquitto/certs host; host=$(hostname -f)
    mkdir -p "$d"; [ -f "$d/ca.key" ] && return
    openssl req -x509 -newkey rsa:3072 -nodes -days 3650 -subj "/CN=bladecodec CA" -keyout "$d/ca.key" -out "$d/ca.crt"
    openssl req -newkey rsa:3072 -nodes -subj "/CN=$host" -keyout "$d/broker.key" -out "$d/broker.csr"
    openssl x509 -req -in "$d/broker.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 825 \
        -extfile <(printf "subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1" "$host") -out "$d/broker.crt"
    chown mosquitto: "$d"/broker.key; chmod 600 "$d"/*.key
    cp "$d/ca.crt" /etc/bladecodec/ca.crt
}

new_password() {   # user -> prints a fresh password, stores its hash in the broker's password file
    local pw; pw=$(openssl rand -hex 24)
    touch /etc/mosquitto/bladecodec.passwd
    mosquitto_passwd -b /etc/mosquitto/bladecodec.passwd "$1" "$pw"
    chown mosquitto: /etc/mosquitto/bladecodec.passwd; chmod 600 /etc/mosquitto/bladecodec.passwd
    echo "$pw"
}

case "$ROLE" in
ground)
    apt-get update && apt-get install -y mosquitto rsync python3-venv
    install_code
    make_certs
    install -m 644 "$SRC/deploy/mosquitto/bladecodec.conf" /etc/mosquitto/conf.d/bladecodec.conf
    install -m 644 "$SRC/deploy/mosquitto/acl" /etc/mosquitto/bladecodec.acl
    [ -f /etc/bladecodec/broker.pass ] || new_password ground > /etc/bladecodec/broker.pass
    [ -f /etc/bladecodec/ground.yaml ] || install -m 640 "$SRC/deploy/ground.example.yaml" /etc/bladecodec/ground.yaml
    chown -R root:bladecodec /etc/bladecodec; chmod 640 /etc/bladecodec/broker.pass
    install -m 644 "$SRC/deploy/systemd/bladecodec-ground.service" /etc/systemd/system/
    systemctl daemon-reload
    systemctl restart mosquitto
    systemctl enable --now bladecodec-ground.service ;;
add-drone)
    DRONE=${2:?drone id}
    echo "password for $DRONE (copy to the drone as /etc/bladecodec/broker.pass with /etc/bladecodec/ca.crt):"
    new_password "$DRONE"
    systemctl reload mosquitto || systemctl restart mosquitto ;;
edge)
    DRONE=${2:?drone id}
    apt-get install -y rsync python3-venv
    install_code
    [ -f /etc/bladecodec/edge.yaml ] || sed -e "s/drone-07/$DRONE/g" "$SRC/deploy/edge.example.yaml" > /etc/bladecodec/edge.yaml
    for f in broker.pass ca.crt; do [ -f /etc/bladecodec/$f ] || { echo "missing /etc/bladecodec/$f"; exit 1; }; done
    chown -R root:bladecodec /etc/bladecodec; chmod 640 /etc/bladecodec/broker.pass
    install -m 644 "$SRC/deploy/systemd/bladecodec-edge.service" /etc/systemd/system/
    systemctl daemon-reload
    systemctl enable --now bladecodec-edge.service ;;
*) echo "unknown role $ROLE" >&2; exit 2 ;;
esac

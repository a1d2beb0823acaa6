#!/usr/bin/env bash
# System packages cbir needs: Java 17 for Spark, dnsmasq for the real-DNS discovery test,
# Debian's chromium (+ chromium-driver) for the web page's browser tests (tests/browser/).
# Installs them with apt when running as root on Debian/Ubuntu; otherwise says what is missing.
set -euo pipefail
need=()
command -v java >/dev/null 2>&1 || [ -n "${JAVA_HOME:-}" ] || need+=(openjdk-17-jre-headless)
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing ${need[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
else
  echo "setup: please install: ${need[*]} (Java is required; dnsmasq and chromium only for" \
       "some tests)" >&2
  for pkg in "${need[@]}"; do
    case "$pkg" in dnsmasq | chromium | chromium-driver) ;; *) exit 1 ;; esac
  done
fi

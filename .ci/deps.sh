# System packages the suite needs (sourced by .ci/run): iproute2 for `ip netns`
# (workers on separate hosts), Debian's chromium for the dashboard's browser
# tests (Playwright drives it; it never downloads a browser of its own), and
# faketime (libfaketime: workers whose clocks are off).
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v chromium >/dev/null || need+=(chromium)
command -v faketime >/dev/null || need+=(faketime)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

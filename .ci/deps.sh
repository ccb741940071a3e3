# System packages the suite needs (sourced by .ci/run). iproute2 gives `ip netns`
# for the tests that place workers on separate hosts.
need=()
command -v ip >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

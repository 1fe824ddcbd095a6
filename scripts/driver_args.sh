# Sourced by the paper's drivers (train/, test/): builds ARGS, the siren command line, from their
# variables. An empty variable passes no flag, so configs/defaults.yaml stays in charge.
#   flag --name "$VAR"           one value
#   flags --name "$VAR"          a list ("200 500 1000" -> three values)
#   switch name "$VAR" VAR       a yes/no variable (1|0) -> --name / --no_name
ARGS=()
flag() { [ -n "$2" ] && ARGS+=("$1" "$2"); return 0; }
flags() { [ -n "$2" ] && { read -r -a _v <<< "$2"; ARGS+=("$1" "${_v[@]}"); }; return 0; }
switch() {
  case "$2" in
    "") ;;
    1|true|yes) ARGS+=("--$1") ;;
    0|false|no) ARGS+=("--no_$1") ;;
    *) echo "$3='$2': use 1 or 0" >&2; exit 2 ;;
  esac
}

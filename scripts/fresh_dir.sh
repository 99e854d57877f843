# Sourced by the scripts that write a whole output folder (demo.sh, make_*_figure.sh).
# fresh_dir DIR VARIABLE: empty DIR for a new run, replacing only a folder one of these scripts wrote (marked
# .mlcdf-demo, the demo's marker from before the figure scripts shared it), never a folder of the user's
# that VARIABLE happens to name: that is one line on stderr and exit 2, with nothing deleted.
fresh_dir() {
  local dir=$1 variable=$2 script
  script=$(basename "$0")
  if [ -e "$dir" ] && [ ! -f "$dir/.mlcdf-demo" ]; then
    echo "$script: $dir exists and was not written by $script; set $variable to another folder" >&2
    exit 2
  fi
  rm -rf "$dir"
  mkdir -p "$dir"
  touch "$dir/.mlcdf-demo"
}

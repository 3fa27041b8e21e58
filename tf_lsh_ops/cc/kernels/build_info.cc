// Records which TensorFlow the library was built against, as a marker string that the Python
// loader reads from the file before loading it (loading a mismatched build may crash).
// `retain` keeps it through the linker's --gc-sections.
#ifndef TF_LSH_BUILT_AGAINST_TF
#error "TF_LSH_BUILT_AGAINST_TF must be defined by the build (see tf_lsh_ops/BUILD)"
#endif

namespace tf_lsh {

extern __attribute__((used, retain)) const char kBuildInfo[] =
    "tf-lsh-built-against-tensorflow=" TF_LSH_BUILT_AGAINST_TF ";";

}  // namespace tf_lsh

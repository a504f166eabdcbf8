# DSI_SANITIZE builds the whole tree (without CUDA) under clang's sanitizers; launch/sanitize.sh
# uses it for the CI jobs and tests/fuzz/run.sh for the fuzzers.
#   address  ASan + UBSan (a UBSan report aborts like an ASan one), with libFuzzer's coverage
#            hooks so that the fuzz targets (DSI_FUZZ=ON) build in the same tree
#   thread   TSan
# The suppression files for the uninstrumented MPI stack live in tests/sanitizers/.
set(DSI_SANITIZE "" CACHE STRING "Build under sanitizers: address (ASan+UBSan) or thread (TSan)")
set_property(CACHE DSI_SANITIZE PROPERTY STRINGS "" address thread)

if(NOT DSI_SANITIZE STREQUAL "")
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "DSI_SANITIZE needs clang (CXX=clang++); see launch/sanitize.sh")
  endif()
  if(DSI_WITH_CUDA)
    message(FATAL_ERROR "DSI_SANITIZE builds without CUDA: configure with -DDSI_CUDA=OFF")
  endif()
  if(DSI_SANITIZE STREQUAL "address")
    set(_san -fsanitize=address,undefined -fno-sanitize-recover=undefined)
    set(_cov -fsanitize=fuzzer-no-link)
  elseif(DSI_SANITIZE STREQUAL "thread")
    set(_san -fsanitize=thread)
    set(_cov)
  else()
    message(FATAL_ERROR "DSI_SANITIZE=${DSI_SANITIZE}: expected address or thread")
  endif()
  add_compile_options(${_san} ${_cov} -fno-omit-frame-pointer -gline-tables-only)
  add_link_options(${_san})
  message(STATUS "dsi: sanitizers: ${_san}")
endif()

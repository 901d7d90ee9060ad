# What operators install: the systemd unit, the man page, the docs and an example config beside
# the CLI, the guest and the library (their install rules are in their folders), and CPack's
# Debian package of all of it: `cpack -G DEB` in the build directory makes sojourn_VERSION_amd64.deb
# (docs/deploy.md). Included from the top-level CMakeLists.txt after the install rules.

install(FILES ${PROJECT_SOURCE_DIR}/packaging/sojourn-node@.service DESTINATION lib/systemd/system)
install(FILES ${PROJECT_SOURCE_DIR}/packaging/example.conf DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples RENAME node.conf)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/docs/ DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(FILES ${PROJECT_SOURCE_DIR}/README.md ${PROJECT_SOURCE_DIR}/CHANGELOG.md DESTINATION ${CMAKE_INSTALL_DOCDIR})

# The man page, made from the built CLI's --help text when help2man is there (bootstrap.sh
# installs it); without it the package has no man page and the configure step says so.
find_program(HELP2MAN_EXECUTABLE help2man)
find_program(GZIP_EXECUTABLE gzip)
if(HELP2MAN_EXECUTABLE AND GZIP_EXECUTABLE)
  set(man_page ${PROJECT_BINARY_DIR}/man/sojourn.1)
  add_custom_command(OUTPUT ${man_page}.gz
    COMMAND ${CMAKE_COMMAND} -DSOJOURN_CLI=$<TARGET_FILE:sojourn_cli> -DHELP2MAN=${HELP2MAN_EXECUTABLE}
            "-DSUBCOMMANDS=node;call;info;eval;fetch;launch;ps;locate;send;wait;ca;keygen;fingerprint"
            -DOUTPUT=${man_page} -DWORK=${PROJECT_BINARY_DIR}/man -P ${PROJECT_SOURCE_DIR}/cmake/man_page.cmake
    COMMAND ${GZIP_EXECUTABLE} -9nf ${man_page}
    DEPENDS sojourn_cli ${PROJECT_SOURCE_DIR}/cmake/man_page.cmake
    COMMENT "Writing the sojourn(1) man page from sojourn --help" VERBATIM)
  add_custom_target(sojourn_man ALL DEPENDS ${man_page}.gz)
  install(FILES ${man_page}.gz DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
else()
  message(STATUS "help2man or gzip not found: no sojourn(1) man page (apt-get install help2man)")
endif()

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME sojourn)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "sojourn maintainers <sojourn@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "code-mobility framework: nodes that run Lua code and agents sent by peers")
set(CPACK_PACKAGE_DESCRIPTION "sojourn moves Lua/LuaJIT code and state between nodes: client-server calls, \
remote evaluation, code on demand and mobile agents. Code from peers runs in a process jail \
(namespaces, seccomp, rlimits) or a KVM microVM. This package holds the sojourn command, its \
static guest, the systemd unit sojourn-node@.service, the static libraries with their headers and \
CMake package files (find_package(sojourn)), the man page and the documentation.")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)  # sojourn_VERSION_ARCH.deb
set(CPACK_DEBIAN_PACKAGE_SECTION net)
# Run-time libraries found by dpkg-shlibdeps in the CLI (libssl, libcrypto, libstdc++, libc);
# LuaJIT and libseccomp are linked statically. adduser: postinst makes the service's user.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "adduser")
# Building applications against the installed library (sojournConfig.cmake's find_dependency).
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "cmake, pkg-config, libboost-dev, libssl-dev, libsqlite3-dev, libluajit-5.1-dev, libseccomp-dev, qemu-system-x86")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${PROJECT_SOURCE_DIR}/packaging/postinst ${PROJECT_SOURCE_DIR}/packaging/prerm ${PROJECT_SOURCE_DIR}/packaging/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)
include(CPack)

// Package tests holds black-box tests of GridKV clusters running in one
// process: every node is a gridkv.DB opened on loopback.
package tests

include $(sort $(wildcard $(BR2_EXTERNAL_SFTPGW_PATH)/package/*/*.mk))
